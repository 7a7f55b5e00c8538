"""Calls through the docker-proxy, run inside the hub container: what does it let through?

``docker exec -i HUB python3 - PROJECT LAB_IMAGE < docker_probe.py`` prints one JSON object:
``{case: [HTTP status, message]}``. Cases named ``allowed:*`` are what gpuhub itself does
(a lab-shaped container is created and removed, its volume read and removed); the others
must be refused. Each refused create differs from the allowed one in one field only, so
a refusal can only come from the proxy's rule for that field. Anything a wrongly allowed
call created is removed before the script ends.
"""

import json
import os
import sys

import docker

project, lab_image = sys.argv[1], sys.argv[2]
api = docker.APIClient(base_url=os.environ["DOCKER_HOST"], version="auto")
hub = os.environ["HOSTNAME"]  # the hub's own container id
lab = f"{project}-lab-probe"
volume = f"{project}-home-probe"
results: dict[str, list] = {}
created: list[str] = []


def outcome(case: str, call):
    try:
        answer = call()
        results[case] = [200, ""]
        return answer
    except docker.errors.APIError as err:
        results[case] = [err.status_code, err.explanation or ""]
        return None


def raw(case: str, method: str, path: str, body=None) -> None:
    data = body if isinstance(body, str) or body is None else json.dumps(body)
    resp = api.request(method, api.base_url + path, data=data, timeout=60,
                                headers={"Content-Type": "application/json"})
    try:
        message = resp.json().get("message", "")
        if resp.status_code == 201 and "/containers/create" in path:
            created.append(resp.json()["Id"])
    except ValueError:
        message = resp.text[:200]
    results[case] = [resp.status_code, message]


def host_config(**changes):
    # What gpuhub sends for a GPU lab (a device request is only checked at start).
    gpu = docker.types.DeviceRequest(driver="nvidia", device_ids=["0"], capabilities=[["gpu"]])
    config = {"binds": {volume: {"bind": "/home/jovyan/work", "mode": "rw"}},
              "network_mode": f"{project}-labs", "cap_drop": ["ALL"],
              "security_opt": ["no-new-privileges"], "pids_limit": 64, "links": {},
              "mounts": [], "device_requests": [gpu]}
    config.update(changes)
    return api.create_host_config(**config)


def create(case: str, name: str = lab, **changes) -> None:
    answer = outcome(case, lambda: api.create_container(
        lab_image, command=["true"], name=name, labels={"gpuhub.project": project},
        host_config=host_config(**changes)))
    if answer:
        created.append(answer["Id"])


def create_body(**host) -> dict:
    return {"Image": lab_image, "Cmd": ["true"],
            "HostConfig": {"NetworkMode": f"{project}-labs", "CapDrop": ["ALL"], **host}}


try:
    # --- what gpuhub itself does -------------------------------------------------------
    outcome("allowed:version", api.version)
    outcome("allowed:list", lambda: api.containers(filters={"label": f"gpuhub.project={project}"}))
    outcome("allowed:inspect", lambda: api.inspect_container(hub))
    outcome("allowed:image", lambda: api.inspect_image(lab_image))
    create("allowed:create a lab")
    if created:
        lab_id = created.pop()
        outcome("allowed:inspect the lab", lambda: api.inspect_container(lab_id))
        outcome("allowed:remove the lab", lambda: api.remove_container(lab_id, v=True))
    outcome("allowed:inspect the work volume", lambda: api.inspect_volume(volume))
    outcome("allowed:remove the work volume", lambda: api.remove_volume(volume))

    # --- one field off a lab -----------------------------------------------------------
    create("privileged", privileged=True)
    create("host bind /:/host", binds={volume: {"bind": "/home/jovyan/work", "mode": "rw"},
                                       "/": {"bind": "/host", "mode": "ro"}})
    create("docker socket bind", binds=["/var/run/docker.sock:/var/run/docker.sock"])
    create("another project's volume", binds=["other-home-probe:/home/jovyan/work:rw"])
    create("a bind mount (Mounts)", mounts=[docker.types.Mount("/host", "/", type="bind")])
    create("volumes from the hub", volumes_from=[hub])
    create("capability SYS_ADMIN", cap_add=["SYS_ADMIN"])
    create("host pid namespace", pid_mode="host")
    create("the hub's pid namespace", pid_mode=f"container:{hub}")
    create("host ipc namespace", ipc_mode="host")
    create("host network", network_mode="host")
    create("the hub's network namespace", network_mode=f"container:{hub}")
    create("another network", network_mode="bridge")
    create("a device", devices=["/dev/null:/dev/probe-null:rwm"])
    create("seccomp unconfined", security_opt=["seccomp=unconfined"])
    create("published port", port_bindings={8888: 18888})
    create("a name outside the project", name="gpuhubprobe-evil")
    # --- the same, written to slip past a naive filter ---------------------------------
    raw("lowercase key, spaces", "POST", f"/containers/create?name={lab}",
        '{"Image": ' + json.dumps(lab_image) + ', "HostConfig": {"privileged" :  true}}')
    raw("\\u-escaped key", "POST", f"/containers/create?name={lab}",
        '{"Image": ' + json.dumps(lab_image) + ', "HostConfig": {"Privil\\u0065ged": true}}')
    raw("legacy top-level Privileged", "POST", f"/containers/create?name={lab}",
        {**create_body(), "Privileged": True})
    raw("capability set (HostConfig.Capabilities)", "POST", f"/containers/create?name={lab}",
        create_body(Capabilities=["CAP_SYS_ADMIN"]))
    raw("old API: HostConfig on start", "POST", f"/v1.23/containers/{hub}/start",
        {"Privileged": True})
    raw("body on start", "POST", f"/containers/{hub}/start", {"Privileged": True})
    raw("encoded path", "POST", f"/containers/{hub}%2Fexec", {"Cmd": ["id"]})
    # --- calls gpuhub never makes ------------------------------------------------------
    outcome("exec", lambda: api.exec_create(hub, ["id"]))
    raw("archive (copy files out)", "GET", f"/containers/{hub}/archive?path=/etc/passwd")
    raw("logs", "GET", f"/containers/{hub}/logs?stdout=1")
    raw("kill", "POST", f"/containers/{hub}/kill?signal=SIGCONT")
    raw("image pull", "POST", "/images/create?fromImage=busybox&tag=latest")
    raw("build", "POST", "/build", "")
    raw("volume create", "POST", "/volumes/create", {"Name": "gpuhubprobe-evil"})
    raw("volume list", "GET", "/volumes")
    raw("network connect", "POST", f"/networks/{project}-labs/connect", {"Container": hub})
    raw("swarm init", "POST", "/swarm/init", {"ListenAddr": "127.0.0.1:2377"})
    raw("swarm info", "GET", "/swarm")
    raw("system info", "GET", "/info")
    raw("secrets", "GET", "/secrets")
    raw("plugins", "GET", "/plugins")
    raw("events", "GET", "/events?until=0")
finally:
    for leftover in created:
        try:
            api.remove_container(leftover, v=True, force=True)
        except docker.errors.APIError:
            pass

print(json.dumps(results))
