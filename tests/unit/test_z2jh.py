"""`invoke export-z2jh`: the values pass the z2jh chart's own schema, map each setting
(default next to override), carry no secrets, and the task never overwrites by accident."""

import os
import re
import stat
from pathlib import Path

import jsonschema
import pytest
import yaml
from invoke import Exit, MockContext

from gpuhub.core.accounts import MIN_PASSWORD_LENGTH, USERNAME_PATTERN
from gpuhub.core.profiles import Profiles
from gpuhub.core.settings import DEFAULT_JUPYTERHUB_VERSION, validate
from gpuhub.tasks import export, z2jh
from gpuhub.tasks import project as project_mod
from support.tasks import assert_one_line_error

ROOT = project_mod.ROOT
CHART_DATA = Path(__file__).resolve().parents[1] / "data" / "z2jh"
SHIPPED_PROFILES = Profiles.from_file(ROOT / "jupyterhub" / "profiles.yaml")
DB_PASSWORD = "s3cret-Pa55"
POSTGRES_URL = f"postgresql://hub:{DB_PASSWORD}@db.example.org:5432/jupyterhub?sslmode=require&password={DB_PASSWORD}"

GPU_PROFILES_YAML = """
- display_name: Small CPU
  slug: small
  cpu_limit: 2
  mem_limit: 4g
- display_name: Big GPU
  slug: big
  description: Two GPUs, own image.
  default: true
  gpus: 2
  image: registry.example.org/ml/lab:2026.1
  cpu_limit: 7.5
  mem_limit: 1.5G
"""


# --- the chart's schema, applied the way helm applies it ------------------------------

def helm_merge(defaults, values):
    """Helm's coalescing: maps merge key by key, anything else (lists too) replaces,
    and null deletes the chart's default."""
    merged = dict(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def chart_validator():
    schema = yaml.safe_load((CHART_DATA / "values.schema.yaml").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def chart_defaults():
    return yaml.safe_load((CHART_DATA / "values.yaml").read_text())


@pytest.fixture
def assert_valid(chart_validator, chart_defaults):
    def check(values: dict) -> None:
        merged = helm_merge(chart_defaults, values)
        errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in chart_validator.iter_errors(merged)]
        assert not errors, "values rejected by the z2jh chart schema:\n" + "\n".join(errors)

    return check


def exported(profiles=SHIPPED_PROFILES, **settings) -> dict:
    """The values as helm reads them: the rendered text, parsed."""
    return yaml.safe_load(z2jh.render(validate(settings), profiles))


def test_default_export_of_the_shipped_profiles_passes_the_chart_schema(assert_valid):
    assert_valid(exported())


def test_export_with_every_setting_changed_passes_the_chart_schema(assert_valid):
    values = exported(
        Profiles.from_yaml(GPU_PROFILES_YAML),
        TLS_CERT="certs/hub.pem", TLS_KEY="certs/hub.key", HUB_HTTP_REDIRECT_PORT="80",
        HUB_PORT="443", DATABASE_URL=POSTGRES_URL, IDLE_TIMEOUT="0", LAB_CPU_LIMIT="3.5",
        LAB_MEM_LIMIT="16g", GPU_POLICY="round-robin", GPU_PINS="alice=0",
        GPU_LIMITS="*=1", SHARED_DATA_DIR="/srv/data", LOG_LEVEL="debug",
        ADMIN_USERS="alice,bob", LAB_IMAGE="registry.example.org:5000/team/lab:2026.1")
    assert_valid(values)


def test_the_schema_check_is_not_vacuous(assert_valid):
    values = exported()
    values["singleuser"]["storage"]["homeMountPth"] = "/home/jovyan/work"
    values["cull"]["timeout"] = "3600"
    with pytest.raises(AssertionError) as info:
        assert_valid(values)
    assert "homeMountPth" in str(info.value) and "cull.timeout" in str(info.value)


def test_vendored_schema_is_from_the_chart_for_the_default_jupyterhub():
    # The chart that runs the pinned JupyterHub, or else the newest for its minor release,
    # or else (a JupyterHub no known chart runs yet: the export says so) the newest known.
    exact = z2jh.chart_version(DEFAULT_JUPYTERHUB_VERSION)
    newest = max(z2jh.CHART_FOR_JUPYTERHUB.items(),
                 key=lambda item: tuple(map(int, item[1].split("."))))
    chart, hub = (exact, DEFAULT_JUPYTERHUB_VERSION) if exact else (
        z2jh.chart_before(DEFAULT_JUPYTERHUB_VERSION) or (newest[1], newest[0]))
    source = (CHART_DATA / "SOURCE.md").read_text()
    assert chart and f"Tag: `{chart}`" in source, (
        f"JupyterHub {DEFAULT_JUPYTERHUB_VERSION} maps to chart {chart}; vendor that tag's "
        "values.schema.yaml and values.yaml and update SOURCE.md")
    assert f"`appVersion` {hub}" in source


# --- each setting, default next to override -------------------------------------------

def test_culling_follows_idle_timeout():
    assert exported()["cull"] == {"enabled": True, "timeout": 3600, "every": 1800}
    assert exported(IDLE_TIMEOUT="120")["cull"] == {"enabled": True, "timeout": 120, "every": 60}
    assert exported(IDLE_TIMEOUT="0")["cull"] == {"enabled": False}


def test_lab_limits_are_left_to_the_chart_unless_set():
    default = exported()["singleuser"]
    assert "cpu" not in default and "memory" not in default
    # auto is the Docker host's size; a cluster's nodes have their own: the notes say so.
    assert any("LAB_MEM_LIMIT=auto" in n for n in z2jh.notes(validate({}), SHIPPED_PROFILES)[
        "singleuser"])
    unlimited = exported(LAB_CPU_LIMIT="none", LAB_MEM_LIMIT="none")["singleuser"]
    assert "cpu" not in unlimited and "memory" not in unlimited
    assert not any("LAB_MEM_LIMIT" in n for n in z2jh.notes(validate(
        {"LAB_MEM_LIMIT": "none"}), SHIPPED_PROFILES)["singleuser"])
    limited = exported(LAB_CPU_LIMIT="2.5", LAB_MEM_LIMIT="8g")["singleuser"]
    assert limited["cpu"] == {"limit": 2.5}
    assert limited["memory"] == {"limit": "8G"}
    assert exported(LAB_CPU_LIMIT="4")["singleuser"]["cpu"] == {"limit": 4}


def test_lab_image_becomes_name_and_tag():
    assert exported()["singleuser"]["image"] == {"name": "gpuhub-lab", "tag": "latest"}
    image = exported(LAB_IMAGE="registry.example.org:5000/team/lab:2026.1")["singleuser"]["image"]
    assert image == {"name": "registry.example.org:5000/team/lab", "tag": "2026.1"}


def test_labs_run_their_image_command_as_on_docker():
    # The chart's default would be jupyterhub-singleuser for every image; null keeps each
    # image's own command (gpuhub's lab image: the leaner gpuhub-singleuser).
    values = exported()
    assert "cmd" in values["singleuser"] and values["singleuser"]["cmd"] is None


@pytest.mark.parametrize("ref, expected", [
    ("lab", ("lab", "latest")),
    ("registry:5000/lab", ("registry:5000/lab", "latest")),
    ("quay.io/jupyter/tensorflow-notebook:cuda-2026-04-27",
     ("quay.io/jupyter/tensorflow-notebook", "cuda-2026-04-27")),
    ("lab@sha256:" + "a" * 64, ("lab@sha256:" + "a" * 64, "")),
])
def test_split_image(ref, expected):
    assert z2jh.split_image(ref) == expected


def test_labs_keep_their_work_folder_storage_and_spawn_settings():
    singleuser = exported(SPAWN_TIMEOUT="600")["singleuser"]
    assert singleuser["storage"] == {"type": "dynamic", "homeMountPath": "/home/jovyan/work"}
    assert singleuser["startTimeout"] == 600
    assert singleuser["defaultUrl"] == "/lab"


def test_shipped_profiles_become_the_profile_list():
    profiles = exported()["singleuser"]["profileList"]
    assert [(p["slug"], p["display_name"], p.get("default", False)) for p in profiles] == [
        ("cpu", "CPU only", False), ("gpu1", "1 GPU", True), ("gpu2", "2 GPUs", False)]
    assert profiles[0]["description"] == SHIPPED_PROFILES.profiles[0].description


def test_gpu_profiles_ask_kubernetes_for_nvidia_gpus_and_cpu_profiles_see_none():
    cpu, gpu1, gpu2 = (p["kubespawner_override"] for p in exported()["singleuser"]["profileList"])
    assert "extra_resource_limits" not in cpu and "extra_resource_guarantees" not in cpu
    assert cpu["environment"] == {"NVIDIA_VISIBLE_DEVICES": "void"}
    assert gpu1["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    assert gpu1["extra_resource_guarantees"] == {"nvidia.com/gpu": "1"}
    assert gpu2["extra_resource_limits"] == gpu2["extra_resource_guarantees"] == {"nvidia.com/gpu": "2"}
    assert "NVIDIA_VISIBLE_DEVICES" not in gpu1["environment"]  # the device plugin sets it


def test_profile_image_and_limits_become_kubespawner_overrides():
    small, big = (p["kubespawner_override"] for p in
                  exported(Profiles.from_yaml(GPU_PROFILES_YAML))["singleuser"]["profileList"])
    assert "image" not in small  # singleuser.image, i.e. LAB_IMAGE
    assert (small["cpu_limit"], small["mem_limit"]) == (2, "4G")
    assert big["image"] == "registry.example.org/ml/lab:2026.1"
    assert (big["cpu_limit"], big["mem_limit"]) == (7.5, "1.5G")


@pytest.mark.parametrize("settings, growth", [
    ({}, False),
    ({"GPU_POLICY": "shared"}, True),
    ({"GPU_POLICY": "round-robin"}, True),
    ({"GPU_POLICY": "shared", "GPU_ALLOW_GROWTH": "no"}, False),
    ({"GPU_ALLOW_GROWTH": "yes"}, True),
])
def test_gpu_profiles_get_tensorflow_memory_growth_as_gpuhub_gives_it(settings, growth):
    cpu, gpu1, _ = (p["kubespawner_override"] for p in
                    exported(**settings)["singleuser"]["profileList"])
    assert ("TF_FORCE_GPU_ALLOW_GROWTH" in gpu1["environment"]) is growth
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in cpu["environment"]


def test_gpu_policies_without_kubernetes_equivalent_are_explained():
    default = z2jh.render(validate({}), SHIPPED_PROFILES)
    assert "time-slicing" in default and "GPU_PINS" in default
    assert "This hub uses GPU_POLICY" not in default
    shared = z2jh.render(validate({"GPU_POLICY": "shared", "GPU_PINS": "alice=0",
                                   "GPU_LIMITS": "*=1"}), SHIPPED_PROFILES)
    assert "This hub uses GPU_POLICY=shared" in shared
    assert "GPU_PINS is set and not exported" in shared
    assert "GPU_LIMITS is set and not exported" in shared


def test_time_limits_and_gpu_reclaim_say_what_the_chart_cannot_express():
    default = z2jh.render(validate({}), SHIPPED_PROFILES)  # GPU profiles: max_age 12h
    assert "Profiles' max_age is not exported" in default and "43200" in default
    assert "GPU_IDLE_TIMEOUT=3600" in default and "DCGM exporter" in default
    off = z2jh.render(validate({"GPU_IDLE_TIMEOUT": "0"}),
                      Profiles.from_yaml("- display_name: Only\n"))
    assert "max_age" not in off and "GPU_IDLE_TIMEOUT" not in off
    assert "maxAge" not in exported()["cull"]  # one for every server would be a guess


def test_native_authenticator_is_configured_as_gpuhub_configures_it():
    config = exported()["hub"]["config"]
    assert config["JupyterHub"]["authenticator_class"] == "native"
    assert config["JupyterHub"]["admin_access"] is False
    assert config["Authenticator"] == {"admin_users": ["admin"], "allow_all": True,
                                       "username_pattern": USERNAME_PATTERN}
    assert config["NativeAuthenticator"] == {
        "enable_signup": False, "open_signup": False,
        "minimum_password_length": MIN_PASSWORD_LENGTH, "check_common_password": True,
        "allowed_failed_logins": 5, "seconds_before_next_try": 600}
    changed = exported(ADMIN_USERS="alice,bob", LOGIN_MAX_FAILURES="3",
                       LOGIN_LOCKOUT_SECONDS="60", LOG_LEVEL="debug")["hub"]["config"]
    assert changed["Authenticator"]["admin_users"] == ["alice", "bob"]
    assert changed["NativeAuthenticator"]["allowed_failed_logins"] == 3
    assert changed["NativeAuthenticator"]["seconds_before_next_try"] == 60
    assert changed["JupyterHub"]["log_level"] == "DEBUG"


def test_https_uses_a_kubernetes_secret_and_no_key_material():
    assert exported()["proxy"] == {"https": {"enabled": False}}
    text = z2jh.render(validate({"TLS_CERT": "/etc/ssl/hub.pem", "TLS_KEY": "/etc/ssl/hub.key",
                                 "COMPOSE_PROJECT_NAME": "lab1"}), SHIPPED_PROFILES)
    assert yaml.safe_load(text)["proxy"]["https"] == {
        "enabled": True, "type": "secret",
        "secret": {"name": "lab1-tls", "key": "tls.key", "crt": "tls.crt"}}
    assert "kubectl create secret tls lab1-tls --namespace lab1" in text
    assert "manual" not in yaml.safe_load(text)["proxy"]["https"]
    assert "/etc/ssl/hub.key" not in text and "PRIVATE KEY" not in text


def test_database_url_is_exported_without_its_password():
    assert exported()["hub"]["db"] == {"type": "sqlite-pvc"}
    assert exported(DATABASE_URL="sqlite:////data/hub.sqlite")["hub"]["db"] == {"type": "sqlite-pvc"}
    text = z2jh.render(validate({"DATABASE_URL": POSTGRES_URL}), SHIPPED_PROFILES)
    assert yaml.safe_load(text)["hub"]["db"] == {
        "type": "postgres", "url": "postgresql://hub@db.example.org:5432/jupyterhub"}
    assert DB_PASSWORD not in text
    assert "password: ..." in text  # where the password goes instead


def test_chart_version_matches_jupyterhub_version():
    text = z2jh.render(validate({"JUPYTERHUB_VERSION": "5.4.4"}), SHIPPED_PROFILES)
    assert "--version 4.3.3" in text and "runs JupyterHub 5.4.4" in text
    unknown = z2jh.render(validate({"JUPYTERHUB_VERSION": "9.9.9"}), SHIPPED_PROFILES)
    assert "--version CHART_VERSION" in unknown
    assert "No chart release known to gpuhub runs JupyterHub 9.9.9" in unknown
    assert "The newest chart gpuhub knows" not in unknown


def test_a_later_patch_release_is_told_the_newest_chart_of_its_minor_release():
    # No chart runs 5.5.4 yet: the file names none, and says which one comes closest.
    settings = validate({"JUPYTERHUB_VERSION": "5.5.4"})
    assert "--version CHART_VERSION" in z2jh.render(settings, SHIPPED_PROFILES)
    text = " ".join(z2jh.notes(settings, SHIPPED_PROFILES)[""])
    assert ("No chart release known to gpuhub runs JupyterHub 5.5.4" in text
            and "The newest chart gpuhub knows for it, 4.4.0, runs JupyterHub 5.5.0" in text)
    assert z2jh.chart_before("5.5.0") is None  # chart 4.4.0 runs it exactly
    assert z2jh.chart_before("5.4.2") == ("4.3.1", "5.4.1")
    assert z2jh.chart_before("5.6.0") is None and z2jh.chart_before("main") is None


def test_shared_data_dir_is_explained_not_exported():
    assert "SHARED_DATA_DIR" not in z2jh.render(validate({}), SHIPPED_PROFILES)
    text = z2jh.render(validate({"SHARED_DATA_DIR": "/srv/data"}), SHIPPED_PROFILES)
    assert "SHARED_DATA_DIR=/srv/data is not exported" in text
    assert "/srv/data" not in yaml.safe_dump(yaml.safe_load(text))


def test_every_comment_line_fits_and_every_section_is_commented():
    text = z2jh.render(validate({"TLS_CERT": "a.pem", "TLS_KEY": "a.key",
                                 "DATABASE_URL": POSTGRES_URL}), SHIPPED_PROFILES)
    assert max(len(line) for line in text.splitlines()) <= 100
    for section in ("hub", "proxy", "singleuser", "cull"):
        assert re.search(rf"^# .*\n{section}:$", text, re.MULTILINE), section


# --- the task ---------------------------------------------------------------------------

def test_task_writes_the_values_file_without_docker_or_secrets(env_file, tmp_path, capsys):
    env_file(DATABASE_URL=POSTGRES_URL, TLS_CERT="a.pem", TLS_KEY="secret.key")
    out = tmp_path / "values.yaml"
    c = MockContext(run={})
    export.export_z2jh(c, output=str(out))
    assert c.run.call_count == 0
    text = out.read_text()
    assert yaml.safe_load(text)["hub"]["db"]["type"] == "postgres"
    assert DB_PASSWORD not in text and "secret.key" not in text
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 & ~umask
    assert f"wrote {out}" in capsys.readouterr().out


def test_task_writes_to_the_current_folder_by_default(env_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export.export_z2jh(MockContext(run={}))
    assert yaml.safe_load((tmp_path / "z2jh-values.yaml").read_text())["cull"]["enabled"] is True


def test_task_never_overwrites_without_force(env_file, tmp_path):
    out = tmp_path / "values.yaml"
    out.write_text("mine\n")
    with pytest.raises(Exit) as info:
        export.export_z2jh(MockContext(run={}), output=str(out))
    assert_one_line_error(info, str(out), "already exists", "--force")
    assert out.read_text() == "mine\n"
    export.export_z2jh(MockContext(run={}), output=str(out), force=True)
    assert "profileList" in out.read_text()


def test_task_refuses_a_missing_folder(env_file, tmp_path):
    with pytest.raises(Exit) as info:
        export.export_z2jh(MockContext(run={}), output=str(tmp_path / "nope" / "values.yaml"))
    assert_one_line_error(info, "does not exist")


def test_task_uses_profiles_file_and_stops_on_a_bad_one(env_file, tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(GPU_PROFILES_YAML)
    env_file(PROFILES_FILE=str(profiles))
    out = tmp_path / "values.yaml"
    export.export_z2jh(MockContext(run={}), output=str(out))
    assert [p["slug"] for p in yaml.safe_load(out.read_text())["singleuser"]["profileList"]] == [
        "small", "big"]
    profiles.write_text("- display_name: X\n  gpu: 1\n")
    with pytest.raises(Exit) as info:
        export.export_z2jh(MockContext(run={}), output=str(tmp_path / "other.yaml"), force=True)
    assert_one_line_error(info, "unknown field", "gpu")
    assert not (tmp_path / "other.yaml").exists()


def test_task_stops_on_invalid_settings_before_writing(env_file, tmp_path):
    env_file(IDLE_TIMEOUT="soon")
    out = tmp_path / "values.yaml"
    with pytest.raises(Exit) as info:
        export.export_z2jh(MockContext(run={}), output=str(out))
    assert_one_line_error(info, "IDLE_TIMEOUT='soon'")
    assert not out.exists()


LDAP_SETTINGS = {"AUTHENTICATOR": "ldap", "LDAP_URL": "ldap://ldap.example.org",
                 "LDAP_CA_FILE": "./ldap-ca.pem", "LDAP_BIND_DN": "cn=search,dc=example,dc=org",
                 "LDAP_BIND_PASSWORD_FILE": "/etc/gpuhub/bind", "LDAP_USER_BASE": "ou=people,dc=x",
                 "LDAP_GROUP_BASE": "ou=groups,dc=x", "ALLOWED_GROUPS": "gpu-users",
                 "ADMIN_GROUPS": "lab-admins"}
OIDC_SETTINGS = {"AUTHENTICATOR": "oidc", "OIDC_ISSUER": "https://login.example.org",
                 "OIDC_CLIENT_ID": "gpuhub", "OIDC_CLIENT_SECRET_FILE": "/etc/gpuhub/secret",
                 "ALLOWED_GROUPS": "gpu-users"}
ENDPOINTS = {"authorization_endpoint": "https://login.example.org/auth",
             "token_endpoint": "https://login.example.org/token",
             "userinfo_endpoint": "https://login.example.org/me"}


def test_ldap_login_is_exported_as_the_hub_has_it_without_the_bind_password(assert_valid, tmp_path):
    from traitlets.config import Config

    from gpuhub.core import names
    from gpuhub.hub import hubconfig

    (tmp_path / names.LDAP_BIND_PASSWORD_SECRET).write_text("bind-s3cret\n")
    settings = validate(LDAP_SETTINGS)
    text = z2jh.render(settings, SHIPPED_PROFILES)
    values = yaml.safe_load(text)
    assert_valid(values)
    config = values["hub"]["config"]
    hub = Config()
    hubconfig.update_auth(hub, settings, tmp_path)
    assert config["LDAPAuthenticator"] == {k: v for k, v in hub.LDAPAuthenticator.items()
                                           if k != "lookup_dn_search_password"}
    assert config["LdapAuthenticator"]["allowed_hub_groups"] == ["gpu-users"]
    assert config["LdapAuthenticator"]["ca_file"] == f"{z2jh.K8S_SECRETS_DIR}/{names.LDAP_CA_SECRET}"
    assert config["JupyterHub"]["authenticator_class"] == "gpuhub.hub.directory.LdapAuthenticator"
    assert "bind-s3cret" not in text and "lookup_dn_search_password: ...}}}" in text.replace("\n# ", " ")


def test_oidc_login_is_exported_with_the_providers_endpoints_and_no_secret(assert_valid):
    text = z2jh.render(validate(OIDC_SETTINGS), SHIPPED_PROFILES, ENDPOINTS)
    values = yaml.safe_load(text)
    assert_valid(values)
    oauth = values["hub"]["config"]["GenericOAuthenticator"]
    assert (oauth["authorize_url"], oauth["token_url"], oauth["userdata_url"]) == tuple(
        ENDPOINTS.values())
    assert oauth["allowed_groups"] == ["gpu-users"] and oauth["manage_groups"] is True
    assert "client_secret" not in oauth
    assert "/hub/oauth_callback as a redirect URI of the client gpuhub" in text.replace("\n# ", " ")


MIG_PROFILES_YAML = """
- display_name: CPU
  slug: cpu
- display_name: Small slice
  slug: small
  gpus: 1
  gpu_slice: 1g.5gb
- display_name: Two big slices
  slug: big
  gpus: 2
  gpu_slice: 3g.20gb
"""


def test_a_mig_profile_asks_for_the_device_plugins_mixed_strategy_resource(assert_valid):
    """k8s-device-plugin v0.7.0+, migStrategy=mixed: nvidia.com/mig-<profile> per profile."""
    values = exported(Profiles.from_yaml(MIG_PROFILES_YAML))
    assert_valid(values)
    _, small, big = (p["kubespawner_override"] for p in values["singleuser"]["profileList"])
    assert small["extra_resource_limits"] == small["extra_resource_guarantees"] == {
        "nvidia.com/mig-1g.5gb": "1"}
    assert big["extra_resource_limits"] == {"nvidia.com/mig-3g.20gb": "2"}
    assert "NVIDIA_VISIBLE_DEVICES" not in small["environment"]


def test_mig_profiles_say_which_device_plugin_strategy_they_need():
    text = z2jh.render(validate({}), Profiles.from_yaml(MIG_PROFILES_YAML))
    said = " ".join(line.lstrip("# ").strip() for line in text.splitlines())
    assert ("MIG: profiles with gpu_slice ask for nvidia.com/mig-1g.5gb, nvidia.com/mig-3g.20gb, "
            "the names the NVIDIA device plugin advertises under its mixed MIG strategy") in said
    assert "MIG: profiles with gpu_slice" not in z2jh.render(validate({}), SHIPPED_PROFILES)
