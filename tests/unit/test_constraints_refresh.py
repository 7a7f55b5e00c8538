"""`python -m tools.constraints refresh` with a stubbed pip: what it asks, what it writes."""

import json
import subprocess

import pytest

from tools import constraints

FILE = """\
# header comment
jupyterhub==5.5.3  # <6: the spawner does not support 6 yet
jupyterlab==4.6.5

# dev
PyYAML==6.0.2
selenium==4.51.0  # <4.52: needs a newer certifi
"""
def report(versions: dict[str, str]) -> str:
    return json.dumps({"install": [{"metadata": {"name": n, "version": v}}
                                   for n, v in versions.items()]})


class Pip:
    """pip install --dry-run --report, and the fresh interpreter that reads the settings."""

    def __init__(self, together: dict[str, str], alone: dict[str, str]):
        self.together, self.alone = together, alone
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess:
        self.commands.append(cmd)
        if cmd[1] == "-c":
            return subprocess.CompletedProcess(cmd, 0, json.dumps("ENV EXAMPLE\n"))
        assert cmd[1:7] == ["-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        if "--no-deps" in cmd:
            return subprocess.CompletedProcess(cmd, 0, report({cmd[-1]: self.alone[cmd[-1]]}))
        return subprocess.CompletedProcess(cmd, 0, report(self.together))


@pytest.fixture
def files(tmp_path):
    paths = {"path": tmp_path / "constraints.txt", "env_example": tmp_path / ".env.example"}
    paths["path"].write_text(FILE)
    paths["env_example"].write_text("OLD\n")
    return paths


# What pip resolves for the pins together (with the holds), and each held one alone.
TOGETHER = {"jupyterhub": "5.5.4", "jupyterlab": "4.6.6", "PyYAML": "6.0.2",
            "selenium": "4.51.0", "tornado": "6.6.1"}
ALONE = {"jupyterhub": "6.1.1", "selenium": "4.52.0"}


def test_every_pin_moves_to_what_pip_resolves_inside_its_hold(files):
    pip = Pip(TOGETHER, ALONE)
    changes = constraints.refresh(runner=pip, **files)
    asked = pip.commands[0]
    assert asked[asked.index("-") + 1:] == ["jupyterhub<6", "jupyterlab", "PyYAML",
                                            "selenium<4.52"]
    assert files["path"].read_text() == FILE.replace("5.5.3", "5.5.4").replace(
        "jupyterlab==4.6.5", "jupyterlab==4.6.6")  # comments, blank lines and order kept
    assert changes == [
        "jupyterhub 5.5.3 -> 5.5.4", "jupyterlab 4.6.5 -> 4.6.6",
        "held: jupyterhub 6.1.1 is out; kept <6 (the spawner does not support 6 yet)",
        "held: selenium 4.52.0 is out; kept <4.52 (needs a newer certifi)"]


def test_what_is_generated_from_the_pins_is_written_again(files):
    constraints.refresh(runner=Pip(TOGETHER, ALONE), **files)
    assert files["env_example"].read_text() == "ENV EXAMPLE\n"


def test_dry_run_and_an_up_to_date_file_write_nothing(files):
    assert constraints.refresh(dry_run=True, runner=Pip(TOGETHER, ALONE), **files)[0] == \
        "jupyterhub 5.5.3 -> 5.5.4"
    same = {"jupyterhub": "5.5.3", "jupyterlab": "4.6.5", "PyYAML": "6.0.2",
            "selenium": "4.51.0"}
    assert constraints.refresh(runner=Pip(same, {"jupyterhub": "5.5.3",
                                                 "selenium": "4.51.0"}), **files) == []
    assert files["path"].read_text() == FILE and files["env_example"].read_text() == "OLD\n"


def test_a_pin_pip_cannot_resolve_stops_the_refresh(files):
    broken = Pip({"jupyterhub": "5.5.4"}, ALONE)
    with pytest.raises(SystemExit, match="pip resolved no version of jupyterlab, PyYAML, selenium$"):
        constraints.refresh(runner=broken, **files)
    failing = lambda cmd: subprocess.CompletedProcess(  # noqa: E731
        cmd, 1, "", "ERROR: ResolutionImpossible: for help visit ...\n")
    with pytest.raises(SystemExit, match="pip could not resolve the pins: ERROR: Resolution"):
        constraints.refresh(runner=failing, **files)
    assert files["path"].read_text() == FILE
