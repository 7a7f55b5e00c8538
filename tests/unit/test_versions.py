"""gpuhub/core/constraints.txt is the one place versions are set, and pins patched releases."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from gpuhub.core import settings, versions
from harness import ROOT
from support import dockerfiles

PINS = versions.read()
# Where packages are installed from: each names its packages and takes the versions from
# constraints.txt.
REQUIREMENTS = ["requirements.txt", "requirements-dev.txt", "jupyterhub/requirements.txt",
                "docs/requirements.txt"]
INSTALLERS = ["jupyterhub/Dockerfile", "jupyterlab/Dockerfile", "noxfile.py", ".ci/run",
              ".github/workflows/gpu-e2e.yml", "docs/gpu-runner.md", ".readthedocs.yaml"]


def pin(name: str) -> Version:
    return Version(PINS[versions.canonical(name)].version)


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(line)
    return names


# --- what is pinned ------------------------------------------------------------------

def test_jupyterhub_is_at_least_6_1_1_and_not_held():
    # 6.1.1 carries the fix for 6.1.0's rejection of 64-character tokens; the plugins pinned
    # next to it have no cap (the database step is gpuhub.services.hubdb).
    assert pin("jupyterhub") >= Version("6.1.1")
    assert PINS["jupyterhub"].hold == ""


def test_the_lab_server_pins_carry_the_published_xss_fixes():
    # jupyter-server < 2.20.0 and JupyterLab < 4.5.7: XSS that leads to token theft.
    assert pin("jupyter-server") >= Version("2.20.0")
    assert pin("jupyterlab") >= Version("4.5.7")


def test_notebook_moves_in_step_with_jupyterlab():
    # Notebook 7.N requires JupyterLab 4.N: pins of two minors cannot be installed together.
    assert (pin("notebook").major, pin("notebook").minor) == (7, pin("jupyterlab").minor)


def test_the_jupyterhub_setting_defaults_to_the_pin():
    assert settings.DEFAULT_JUPYTERHUB_VERSION == PINS["jupyterhub"].version
    defaults = {s.name: s.default for s in settings.SETTINGS}
    assert defaults["JUPYTERHUB_VERSION"] == PINS["jupyterhub"].version
    assert defaults["HUB_BASE_IMAGE"].endswith(f":{PINS['jupyterhub'].version}")


# --- nothing else sets a version -----------------------------------------------------

@pytest.mark.parametrize("name", REQUIREMENTS)
def test_requirement_files_name_pinned_packages_without_versions(name):
    path = ROOT / name
    names = requirement_names(path)
    assert names and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names), names
    missing = [n for n in names if versions.canonical(n) not in PINS]
    assert not missing, f"{name} installs {missing}; pin them in gpuhub/core/constraints.txt"


def test_the_requirement_files_read_the_constraints():
    for name in ["requirements.txt", "requirements-dev.txt"]:
        assert "-c gpuhub/core/constraints.txt" in (ROOT / name).read_text().splitlines(), name


@pytest.mark.parametrize("name", INSTALLERS)
def test_no_installer_pins_a_version_of_its_own(name):
    text = (ROOT / name).read_text()
    pinned_here = re.findall(r"\b[A-Za-z][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.+!_-]*", text)
    assert not pinned_here, f"{name} pins {pinned_here}; move them to gpuhub/core/constraints.txt"
    for arg in re.findall(r"ARG (\w*VERSION)=(\S+)", text):
        assert arg[0] == "CONFIGURABLE_HTTP_PROXY_VERSION", (  # npm, not pip
            f"{name}: ARG {arg[0]}={arg[1]} repeats a version; leave it empty")


def lab_install() -> list[str]:
    dockerfile = (ROOT / "jupyterlab" / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"pip install --no-cache-dir -c /tmp/gpuhub-constraints.txt ([^;]+);",
                      dockerfile)
    assert found, "the lab image installs its packages with the constraints"
    return found.group(1).split()


def test_the_lab_image_installs_the_pinned_jupyter_server_stack():
    assert lab_install() == ["jupyterhub", "jupyter-server", "jupyterlab", "notebook",
                             "jupyterlab-nvdashboard"]
    assert all(versions.canonical(n) in PINS for n in lab_install())
    assert versions.canonical("nvidia-ml-py") in PINS  # what the dashboards read GPUs with


def test_both_images_build_from_the_repository_root_with_the_constraints():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert {"!gpuhub/", "!jupyterhub/", "!jupyterlab/"} <= set(ignore)
    assert "gpuhub/core/constraints.txt" not in ignore and "gpuhub/core/versions.py" not in ignore
    hub = (ROOT / "jupyterhub" / "Dockerfile").read_text()
    assert "COPY gpuhub/core/versions.py gpuhub/core/constraints.txt /tmp/gpuhub-versions/" in hub
    lab = (ROOT / "jupyterlab" / "Dockerfile").read_text()
    assert "--mount=type=bind,source=gpuhub/core,target=/tmp/gpuhub-versions" in lab


# The helper images invoke builds with --build-arg BASE_IMAGE=$DEBIAN_BASE_IMAGE
# (tests/unit/test_tasks.py checks those commands).
DEBIAN_DOCKERFILES = ["jupyterhub/docker-proxy/Dockerfile", "jupyterhub/lab-firewall/Dockerfile"]


@pytest.mark.parametrize("name", DEBIAN_DOCKERFILES)
def test_a_debian_helper_image_builds_by_hand_on_the_debian_base_image_setting(name):
    """`docker build` without invoke's --build-arg starts from DEBIAN_BASE_IMAGE's default."""
    path = ROOT / name
    assert dockerfiles.base_images(path) == ["${BASE_IMAGE}"], name
    declared = dockerfiles.global_args(path)
    assert declared.get("BASE_IMAGE") == settings.BY_NAME["DEBIAN_BASE_IMAGE"].default, (
        f"{name}: ARG BASE_IMAGE={declared.get('BASE_IMAGE')}; make it DEBIAN_BASE_IMAGE's "
        "default in gpuhub/core/settings.py")


# --- the module and its script -------------------------------------------------------

def script(*args: str) -> subprocess.CompletedProcess:
    """versions.py as the image builds run it: isolated, no site-packages (stdlib only)."""
    return subprocess.run([sys.executable, "-I", "-S", str(versions.__file__), *args],
                          capture_output=True, text=True, timeout=30)


def test_the_script_prints_the_constraints_with_jupyterhub_versions_version():
    text = versions.CONSTRAINTS.read_text()
    out = script("constraints", "jupyterhub=5.5.3")
    assert out.returncode == 0, out.stderr
    changed = [(a, b) for a, b in zip(text.splitlines(), out.stdout.splitlines(), strict=True)
               if a != b]
    assert len(changed) == 1 and changed[0][1] == "jupyterhub==5.5.3", changed
    assert script("constraints", "jupyterhub=").stdout == text  # empty: the pin stays


def test_the_script_refuses_a_package_it_does_not_pin():
    out = script("constraints", "jupyterhubb=5.5.3")
    assert out.returncode == 1 and out.stdout == ""
    assert "pins no version of jupyterhubb" in out.stderr
    assert script("constraint").returncode == 2


def test_a_line_that_is_not_a_pin_is_refused_with_its_place(tmp_path):
    path = tmp_path / "constraints.txt"
    path.write_text("# pins\njupyterhub>=5\n")
    with pytest.raises(ValueError, match=r"constraints.txt:2: expected NAME==VERSION"):
        versions.read(path)
    path.write_text("PyYAML==6.0.3\npyyaml==6.0.2\n")
    with pytest.raises(ValueError, match="pinned twice"):
        versions.read(path)


def test_holds_and_comments_are_read_and_kept():
    line = versions.parse_line("selenium==4.51.0  # <4.52,!=4.51.1: needs a newer certifi")
    assert (line.version, line.hold) == ("4.51.0", "<4.52,!=4.51.1")
    plain = versions.parse_line("aiohttp==3.14.5  # the broker's server: Debian's in its image")
    assert plain.hold == "" and plain.comment.startswith("the broker's")
    assert versions.parse_line("  # a comment") is None and versions.parse_line("") is None
    assert versions.pinned("PYYAML") == versions.pinned("pyyaml")


def test_the_docs_install_with_the_constraints_everywhere_they_are_built():
    nox = (ROOT / "noxfile.py").read_text()
    assert 'session.install("-c", CONSTRAINTS, "-r", "docs/requirements.txt")' in nox
    rtd = (ROOT / ".readthedocs.yaml").read_text()
    assert "pip install -c gpuhub/core/constraints.txt -r docs/requirements.txt" in rtd
