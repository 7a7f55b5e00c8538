"""Settings: defaults, one clear message per bad value, the .env reader, generated files."""

import ast
import re
from pathlib import Path

import pytest

from gpuhub.core import settings
from gpuhub.core.settings import SETTINGS, SettingsError, read_env_file, validate
from harness import ROOT

# Variables compose interpolates that are not user settings: `invoke up` sets them.
COMPOSE_ONLY = {"GPUHUB_ENV_FILE", "GPUHUB_GPU_INVENTORY", "GPUHUB_LABS_BRIDGE",
                "GPUHUB_LAB_HOST_MEMORY", "GPUHUB_LABS_CGROUP_PARENT", "GPUHUB_LABS_MEMORY",
                "GPUHUB_SERVICES_CGROUP_PARENT",
                "GPUHUB_CGROUP_DRIVER", "GPUHUB_CGROUP_VERSION", "GPUHUB_SERVICES_OOM_SCORE_ADJ",
                "GPUHUB_LAB_DISK_LIMIT"}


def problem_for(env: dict) -> str:
    with pytest.raises(SettingsError) as info:
        validate(env)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def test_defaults_validate():
    s = validate({})
    assert s.compose_project_name == "gpuhub"
    assert s.hub_port == 8000
    assert s.admin_users == ("admin",)
    assert s.idle_timeout == 3600
    assert s.lab_cpu_limit == "auto"
    assert s.lab_mem_limit == "auto"
    assert s.gpu_devices == "auto"
    assert s.database_url == ""
    assert s.docker_socket_proxy is True and s.lab_firewall is True
    assert s.lab_blocked_networks == ()


def test_raw_env_round_trips_through_validate():
    raw = validate({"ADMIN_USERS": "alice, bob", "LAB_CPU_LIMIT": "2"}).raw_env()
    assert raw["ADMIN_USERS"] == "alice,bob"
    assert raw["LAB_CPU_LIMIT"] == "2.0"
    assert raw["LAB_MEM_LIMIT"] == "auto"
    assert validate(raw).raw_env() == raw


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        validate({}).no_such_setting  # noqa: B018


@pytest.mark.parametrize(("name", "bad", "fix"), [
    ("HUB_PORT", "80a", "whole number from 1 to 65535"),
    ("HUB_PORT", "0", "whole number from 1 to 65535"),
    ("HUB_PORT", "70000", "whole number from 1 to 65535"),
    ("HUB_PORT", "", "whole number from 1 to 65535"),
    ("HUB_BIND_ADDRESS", "localhost", "IP address such as 0.0.0.0"),
    ("COMPOSE_PROJECT_NAME", "My Hub", "lowercase letters, digits"),
    ("COMPOSE_PROJECT_NAME", "-hub", "starting with a letter or digit"),
    ("ADMIN_USERS", "Alice", "invalid user name 'Alice'"),
    ("ADMIN_USERS", "bob,bob", "lists a user twice"),
    ("IDLE_TIMEOUT", "1h", "whole number of seconds (0 turns it off)"),
    ("IDLE_TIMEOUT", "-5", "0 or more seconds"),
    ("SPAWN_TIMEOUT", "0", "at least 1 second"),
    ("LOG_LEVEL", "VERBOSE", "DEBUG, INFO, WARNING or ERROR"),
    ("LAB_CPU_LIMIT", "two", "auto, none (both: no quota) or a number of CPUs above 0"),
    ("LAB_CPU_LIMIT", "0", "a number of CPUs above 0"),
    ("LAB_CPU_LIMIT", "nan", "a number of CPUs above 0"),
    # Empty no longer means "no limit": that is written none.
    ("LAB_CPU_LIMIT", "", "auto, none (both: no quota)"),
    ("LAB_MEM_LIMIT", "", "auto (the host's memory less a reserve), none (no limit) or a size"),
    ("LAB_MEM_LIMIT", "8GB", "none (no limit) or a size such as 512M or 16G"),
    ("LAB_MEM_LIMIT", "0G", "at least 6M"),
    ("LAB_MEM_LIMIT", "4K", "at least 6M"),
    ("LAB_MEM_LIMIT", "1073741824", "needs a unit: must be auto"),
    ("SHARED_DATA_DIR", "data/shared", "absolute path on the host"),
    ("EXTRA_CA_CERTS", "ca.pem", "absolute path on the host"),
    ("DATABASE_URL", "mysql://hub@db/hub", "sqlite:// or postgresql://"),
    ("GPU_DEVICES", "all", "'all' is neither a GPU index"),
    ("GPU_DEVICES", "0,,1", "auto, none, or a comma-separated list"),
    # The toolkit on R470+ drivers refuses it (NVIDIA/nvidia-container-toolkit#203).
    ("GPU_DEVICES", "MIG-GPU-932bfb2c-849a-2a22-1e84-9eff6bc02b39/1/0",
     "the MIG ID form drivers before R470 used; name the instance by its MIG-<uuid> from "
     "`nvidia-smi -L` or as <gpu>:<mig> (e.g. 0:1)"),
    ("GPU_PINS", "alice=MIG-GPU-932bfb2c-849a-2a22-1e84-9eff6bc02b39/1/0", "before R470"),
    ("GPU_DEVICES", "MIG-4f6f9d2a/1/0", "is neither a GPU index (0, 1, …), a MIG instance (0:1)"),
    ("GPU_DEVICES", "0:1:2", "is neither"),
    ("GPU_DEVICES", "0,1,0", "lists a GPU twice"),
    ("DOCKER_SOCKET_PROXY", "maybe", "must be true or false"),
    ("LAB_FIREWALL", "on", "must be true or false"),
    ("LAB_BLOCKED_NETWORKS", "10.0.0.1/8", "write 10.0.0.0/8 for the whole network"),
    ("LAB_BLOCKED_NETWORKS", "office", "'office' is not a network"),
    ("LAB_BLOCKED_NETWORKS", "10.0.0.0/33", "is not a network"),
    ("LAB_BLOCKED_NETWORKS", "fd00::/8", "is IPv6; labs have no IPv6"),
    ("LAB_BLOCKED_NETWORKS", "10.0.0.0/8,10.0.0.0/8", "lists a network twice"),
    ("LAB_START_CONCURRENCY", "-1", "auto, 0 (no limit) or a whole number"),
    ("LAB_START_CONCURRENCY", "cores", "auto, 0 (no limit) or a whole number"),
])
def test_bad_value_names_setting_quotes_value_and_says_fix(name, bad, fix):
    message = problem_for({name: bad})
    assert message.startswith(f"{name}={bad.strip()!r} in the settings: "), message
    assert fix in message
    assert settings.BY_NAME[name].help in message


def test_every_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as info:
        validate({"HUB_PORT": "x", "LOG_LEVEL": "loud"})
    assert [p.split("=")[0] for p in info.value.problems] == ["HUB_PORT", "LOG_LEVEL"]
    assert str(info.value).count("\n") == 1


@pytest.mark.parametrize(("name", "good", "parsed"), [
    ("HUB_PORT", " 8443 ", 8443),
    ("HUB_BIND_ADDRESS", "::1", "::1"),
    ("COMPOSE_PROJECT_NAME", "gpuhub-test_2", "gpuhub-test_2"),
    ("ADMIN_USERS", " alice , bob ,", ("alice", "bob")),
    ("ADMIN_USERS", "", ()),
    ("IDLE_TIMEOUT", "0", 0),
    ("LOG_LEVEL", "debug", "DEBUG"),
    ("LAB_CPU_LIMIT", "0.5", 0.5),
    ("LAB_CPU_LIMIT", "AUTO", "auto"),
    ("LAB_CPU_LIMIT", "none", "none"),
    ("LAB_MEM_LIMIT", "Auto", "auto"),
    ("LAB_MEM_LIMIT", "NONE", "none"),
    ("LAB_MEM_LIMIT", "512m", "512M"),
    ("LAB_MEM_LIMIT", "1.5G", "1.5G"),
    ("SHARED_DATA_DIR", "/srv/datasets", "/srv/datasets"),
    ("DATABASE_URL", "postgresql+psycopg2://hub@db/hub", "postgresql+psycopg2://hub@db/hub"),
    ("GPU_DEVICES", "none", "none"),
    ("GPU_DEVICES", "0, 2", "0,2"),
    ("GPU_DEVICES", "GPU-4f6f9d2a-1c3e,MIG-4f6f9d2a-5c7d", "GPU-4f6f9d2a-1c3e,MIG-4f6f9d2a-5c7d"),
    ("GPU_DEVICES", "0:1, 1:0,2", "0:1,1:0,2"),
    ("GPU_PINS", "alice=0:1", {"alice": ["0:1"]}),
    ("DOCKER_SOCKET_PROXY", "False", False),
    ("LAB_FIREWALL", "no", False),
    ("LAB_BLOCKED_NETWORKS", " 10.0.0.0/8 , 203.0.113.7,", ("10.0.0.0/8", "203.0.113.7/32")),
    ("LAB_START_CONCURRENCY", "AUTO", "auto"),
    ("LAB_START_CONCURRENCY", "0", 0),
    ("LAB_START_CONCURRENCY", "4", 4),
])
def test_good_value_is_parsed(name, good, parsed):
    assert getattr(validate({name: good}), name.lower()) == parsed


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_blocked_networks_need_the_lab_firewall():
    message = problem_for({"LAB_FIREWALL": "false", "LAB_BLOCKED_NETWORKS": "10.0.0.0/8"})
    assert message.startswith("LAB_BLOCKED_NETWORKS='10.0.0.0/8' in the settings needs "
                              "LAB_FIREWALL=true"), message


@pytest.mark.parametrize("path", ["/data/dätä", '/data/a"b', "/data/a\\b"])
def test_the_docker_proxy_needs_a_plain_shared_data_dir(path):
    message = problem_for({"SHARED_DATA_DIR": path})
    assert message.startswith(f"SHARED_DATA_DIR={path!r} in the settings: with "
                              "DOCKER_SOCKET_PROXY=true"), message
    assert validate({"SHARED_DATA_DIR": path, "DOCKER_SOCKET_PROXY": "false"})


def test_booleans_reach_compose_as_true_and_false():
    raw = validate({"DOCKER_SOCKET_PROXY": "no"}).raw_env()
    assert (raw["DOCKER_SOCKET_PROXY"], raw["LAB_FIREWALL"]) == ("false", "true")


def test_read_env_file_handles_comments_quotes_and_export(tmp_path):
    path = write(tmp_path, "\n".join([
        "# a comment",
        "",
        "HUB_PORT=8443",
        "export LOG_LEVEL=debug",
        'ADMIN_USERS="alice,bob"',
        "LAB_MEM_LIMIT='8G'",
        "IDLE_TIMEOUT=600 # ten minutes",
        "SHARED_DATA_DIR=",
        "GPUHUB_ANYTHING=allowed",
    ]))
    assert read_env_file(path) == {
        "HUB_PORT": "8443",
        "LOG_LEVEL": "debug",
        "ADMIN_USERS": "alice,bob",
        "LAB_MEM_LIMIT": "8G",
        "IDLE_TIMEOUT": "600",
        "SHARED_DATA_DIR": "",
        "GPUHUB_ANYTHING": "allowed",
    }


def test_read_env_file_keeps_hash_inside_quotes(tmp_path):
    path = write(tmp_path, 'DATABASE_URL="postgresql://hub:pa #ss@db/hub"\n')
    assert read_env_file(path) == {"DATABASE_URL": "postgresql://hub:pa #ss@db/hub"}


def test_missing_env_file_means_defaults(tmp_path):
    assert read_env_file(tmp_path / "absent.env") == {}


def test_unknown_key_suggests_the_setting(tmp_path):
    path = write(tmp_path, "# settings\nHUB_PROT=8000\n")
    with pytest.raises(SettingsError) as info:
        read_env_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: unknown setting 'HUB_PROT'.")
    assert "Did you mean" in message and "HUB_PORT" in message
    assert "See .env.example" in message


def test_unknown_key_without_a_close_match_gives_no_guess(tmp_path):
    with pytest.raises(SettingsError) as info:
        read_env_file(write(tmp_path, "FOO=1\n"))
    assert "Did you mean" not in str(info.value)
    assert "unknown setting 'FOO'" in str(info.value)


@pytest.mark.parametrize("line", ["HUB_PORT 8000", "1HUB=2", "=8000"])
def test_line_that_is_not_key_value_names_the_line(tmp_path, line):
    path = write(tmp_path, f"HUB_PORT=8000\n{line}\n")
    with pytest.raises(SettingsError) as info:
        read_env_file(path)
    assert str(info.value) == f"{path}:2: expected KEY=VALUE, got {line!r}"


def test_env_example_at_repo_root_is_generated_from_settings():
    assert (ROOT / ".env.example").read_text() == settings.env_example(), (
        "regenerate it: python -c 'from gpuhub.core import settings; "
        "print(settings.env_example(), end=\"\")' > .env.example"
    )


def test_env_example_lists_every_default_and_they_validate(tmp_path):
    path = write(tmp_path, settings.env_example())
    values = read_env_file(path)
    assert values == {s.name: s.default for s in SETTINGS}
    assert validate(values) == validate({})


COMPOSE_VAR = re.compile(r"\$\{(?P<name>\w+)(?P<op>:?-)?(?P<default>[^}]*)\}")


def compose_variables() -> list[re.Match]:
    """${...} in every compose file whose variables have defaults (not the TLS ones)."""
    text = "".join((ROOT / name).read_text() for name in (
        "docker-compose.yml", "docker-compose.docker-socket.yml",
        "docker-compose.no-lab-firewall.yml"))
    return list(COMPOSE_VAR.finditer(text))


def test_compose_defaults_equal_the_settings_defaults():
    found = compose_variables()
    assert found, "docker-compose.yml interpolates no ${...} variables?"
    for m in found:
        name = m["name"]
        assert name in settings.BY_NAME or name in COMPOSE_ONLY, (
            f"docker-compose.yml uses ${{{name}}}, which is not a setting in gpuhub/core/settings.py"
        )
        assert m["op"] == ":-", f"${{{name}}} in docker-compose.yml needs a :-default"
        if name in settings.BY_NAME:
            assert m["default"] == settings.BY_NAME[name].default, (
                f"docker-compose.yml defaults {name} to {m['default']!r}, "
                f"gpuhub/core/settings.py to {settings.BY_NAME[name].default!r}"
            )


def test_compose_publishes_the_hub_port_settings():
    names = {m["name"] for m in compose_variables()}
    assert {"COMPOSE_PROJECT_NAME", "HUB_IMAGE", "HUB_BIND_ADDRESS", "HUB_PORT"} <= names


def test_every_setting_is_declared_with_its_parsers_type_for_the_type_checker():
    """Settings' attributes come from __getattr__; the class declares each for editors and
    mypy (under TYPE_CHECKING). The declarations are the SETTINGS list, with the types its
    parsers return."""
    tree = ast.parse(Path(settings.__file__).read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    [block] = [n for n in cls.body if isinstance(n, ast.If)
               and ast.unparse(n.test) == "TYPE_CHECKING"]
    declared = {n.target.id: ast.unparse(n.annotation) for n in block.body}
    assert declared == {s.name.lower(): s.parse.__annotations__["return"]
                        for s in settings.SETTINGS}


def test_a_renamed_setting_is_still_read_under_its_old_name(tmp_path):
    path = tmp_path / ".env"
    path.write_text("GPU_QUEUE_TIMEOUT=60\nGPU_QUEUE_MAX=3\nGPU_IDLE_TIMEOUT_WHEN_QUEUED=120\n")
    s = validate(read_env_file(path))
    assert (s.gpu_line_timeout, s.gpu_line_max, s.gpu_idle_timeout_while_waiting) == (60, 3, 120)
    assert "GPU_QUEUE_MAX" not in s.raw_env() and s.raw_env()["GPU_LINE_MAX"] == "3"
    assert validate({"GPU_QUEUE_MAX": "3", "GPU_LINE_MAX": "3"}).gpu_line_max == 3
    with pytest.raises(SettingsError, match="GPU_QUEUE_MAX is the old name of GPU_LINE_MAX"):
        validate({"GPU_QUEUE_MAX": "3", "GPU_LINE_MAX": "5"})
