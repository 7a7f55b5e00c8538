"""What the compose files promise (docs/explanation/security-model.md), read as compose reads them.

Each file is YAML that `docker compose` merges with the others `invoke up` picks; these
tests read every file, so an override that publishes a port, adds a capability or moves a
service onto a network is caught wherever it is written.
"""

from __future__ import annotations

import yaml

from gpuhub.core import names
from harness import ROOT

DEFAULT_CPU_WEIGHT = 1024  # Docker's cpu_shares of a container that sets none (labs)


def compose_files() -> dict[str, dict]:
    files = {path.name: yaml.safe_load(path.read_text())
             for path in sorted(ROOT.glob("docker-compose*.yml"))}
    assert "docker-compose.yml" in files and len(files) > 1, sorted(files)
    return files


def services() -> dict[tuple[str, str], dict]:
    return {(name, service): spec or {}
            for name, compose in compose_files().items()
            for service, spec in (compose.get("services") or {}).items()}


BASE = compose_files()["docker-compose.yml"]["services"]


def test_only_the_proxy_publishes_ports_the_https_redirect_only_with_its_file():
    published = {key: spec["ports"] for key, spec in services().items() if spec.get("ports")}
    assert published == {
        ("docker-compose.yml", "proxy"): ["${HUB_BIND_ADDRESS:-0.0.0.0}:${HUB_PORT:-8000}:8000"],
        ("docker-compose.tls-redirect.yml", "proxy"): [
            "${HUB_BIND_ADDRESS:-0.0.0.0}:${HUB_HTTP_REDIRECT_PORT:?set HUB_HTTP_REDIRECT_PORT "
            "in .env, or leave out docker-compose.tls-redirect.yml}:8080"]}
    # Neither API port is exposed in any other way either.
    assert not [key for key, spec in services().items() if spec.get("expose")]


def test_the_proxy_api_listens_inside_only_and_with_the_token():
    command = " ".join(BASE["proxy"]["command"])
    assert "--api-ip=0.0.0.0 --api-port=8001" in command
    assert 'CONFIGPROXY_AUTH_TOKEN="$$(cat /run/secrets/proxy_auth_token)"' in command
    assert BASE["proxy"]["networks"] == {"labs": {"aliases": ["proxy"]}}


def test_the_hub_proxy_and_broker_get_four_times_a_labs_cpu_weight():
    weights = {name: spec.get("cpu_shares") for name, spec in BASE.items()}
    assert weights == {"hub": 4 * DEFAULT_CPU_WEIGHT, "proxy": 4 * DEFAULT_CPU_WEIGHT,
                       "docker-proxy": 4 * DEFAULT_CPU_WEIGHT, "gpu-sampler": None,
                       "lab-firewall": None, "lab-memory": None}


def test_the_hub_proxy_and_broker_run_under_the_parent_lab_memory_weights():
    parents = {name: spec.get("cgroup_parent") for name, spec in BASE.items()}
    variable = f"${{{names.SERVICES_CGROUP_PARENT_ENV}:-}}"
    assert parents == {"hub": variable, "proxy": variable, "docker-proxy": variable,
                       "gpu-sampler": None, "lab-firewall": None, "lab-memory": None}
    assert BASE["lab-memory"]["environment"][names.SERVICES_CGROUP_PARENT_ENV] == variable
    # No other file moves a service to another parent (a lab's is the broker's business).
    assert not [key for key, spec in services().items()
                if "cgroup_parent" in spec and key[0] != "docker-compose.yml"]


def test_lab_memory_has_no_network_one_capability_and_only_the_cgroup_tree():
    memory = BASE["lab-memory"]
    assert memory["network_mode"] == "none" and memory["cap_drop"] == ["ALL"]
    assert memory["read_only"] is True and memory["cap_add"] == ["DAC_OVERRIDE"]
    assert memory["volumes"] == ["/sys/fs/cgroup:/host/cgroup"]
    assert memory["command"] == ["python3", names.LAB_MEMORY_SCRIPT, "run"]
    assert BASE["hub"]["depends_on"]["lab-memory"] == {"condition": "service_healthy",
                                                      "required": False}
    off = compose_files()["docker-compose.no-lab-memory.yml"]["services"]
    assert off == {"lab-memory": {"profiles": ["disabled"]}}


def test_the_lab_firewall_has_the_host_network_and_only_net_admin_and_net_raw():
    firewall = BASE["lab-firewall"]
    assert firewall["network_mode"] == "host"
    assert firewall["cap_drop"] == ["ALL"]
    assert firewall["cap_add"] == ["NET_ADMIN", "NET_RAW"]
    assert firewall["security_opt"] == ["no-new-privileges"]
    assert firewall["read_only"] is True
    assert "privileged" not in firewall and "volumes" not in firewall, firewall
    # No override gives it more (labs apart only names its peers on the labs network).
    assert [key for key, spec in services().items()
            if key[1] == "lab-firewall" and key[0] != "docker-compose.yml"
            and set(spec) - {"profiles"}] == [("docker-compose.labs-apart.yml", "lab-firewall")]
    apart = services()[("docker-compose.labs-apart.yml", "lab-firewall")]
    assert apart == {"environment": {
        "GPUHUB_LABS_PEERS": "${GPUHUB_HUB_ADDRESS},${GPUHUB_PROXY_ADDRESS}"}}


def test_the_proxy_starts_only_once_the_lab_firewall_is_healthy():
    """Docker writes the proxy's port rules; the firewall's own go in first."""
    assert BASE["proxy"]["depends_on"]["lab-firewall"]["condition"] == "service_healthy"
    # Healthy means its rules are in (the image's health check; none in compose overrides it).
    assert "HEALTHCHECK" in (ROOT / "jupyterhub/lab-firewall/Dockerfile").read_text()
    assert "healthcheck" not in BASE["lab-firewall"]


def test_the_docker_api_network_is_internal_and_holds_only_the_hub_and_the_broker():
    assert compose_files()["docker-compose.yml"]["networks"]["docker-api"] == {"internal": True}
    on_it = sorted({service for (_, service), spec in services().items()
                    if "docker-api" in (spec.get("networks") or ())})
    assert on_it == ["docker-proxy", "hub"]


def test_only_the_broker_mounts_the_socket_unless_the_socket_file_says_so():
    mounts = {key: [v for v in spec.get("volumes") or () if "docker.sock" in v]
              for key, spec in services().items()}
    assert {key: v for key, v in mounts.items() if v} == {
        ("docker-compose.yml", "docker-proxy"): [
            "${DOCKER_SOCKET:-/var/run/docker.sock}:/var/run/docker.sock:ro"],
        ("docker-compose.docker-socket.yml", "hub"): [
            "${DOCKER_SOCKET:-/var/run/docker.sock}:/var/run/docker.sock"]}


def test_only_the_sampler_gets_gpus_and_only_the_drivers_utility_capability():
    """The sampler needs nvidia-smi (utility), not CUDA (compute); the hub gets no GPU."""
    requests = {}
    for key, spec in services().items():
        devices = (((spec.get("deploy") or {}).get("resources") or {})
                   .get("reservations") or {}).get("devices")
        if devices or spec.get("runtime") or spec.get("gpus"):
            requests[key] = devices
    assert requests == {("docker-compose.gpu-sampler.yml", "gpu-sampler"): [
        {"driver": "nvidia", "count": "all", "capabilities": ["utility"]}]}


def test_labs_apart_repeats_the_labs_network_and_adds_only_its_subnet_and_icc():
    """Compose replaces a network an override names, whole (the services' networks merge)."""
    base = compose_files()["docker-compose.yml"]["networks"]["labs"]
    apart = compose_files()["docker-compose.labs-apart.yml"]["networks"]["labs"]
    assert apart["driver_opts"] == {**base["driver_opts"],
                                    "com.docker.network.bridge.enable_icc": "false"}
    assert {k: v for k, v in apart.items() if k not in ("driver_opts", "ipam")} == {
        k: v for k, v in base.items() if k != "driver_opts"}
    assert apart["ipam"] == {"config": [{"subnet": "${GPUHUB_LABS_SUBNET:?run invoke up, "
                                                   "which sets it}",
                                         "ip_range": "${GPUHUB_LABS_RANGE:?run invoke up, "
                                                     "which sets it}"}]}
