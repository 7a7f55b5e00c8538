"""The borders between the runtimes hold, and each check fails when one is broken.

Each case copies the package, adds one import that crosses a border, and runs the same
checks `nox -s lint` runs (import-linter's contracts, tools/importborders.py): the copy must
fail them, the real tree must pass.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def checks(root: Path) -> list[subprocess.CompletedProcess]:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return [
        subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"),
                        "--no-cache"], cwd=root, env=env, capture_output=True, text=True),
        subprocess.run([sys.executable, "-m", "tools.importborders", str(root)], cwd=root,
                       env=env, capture_output=True, text=True),
    ]


def test_the_tree_keeps_every_border():
    for result in checks(ROOT):
        assert result.returncode == 0, result.stdout + result.stderr


# (module to change, import to add, which check catches it, words it says)
BREACHES = [
    ("gpuhub/core/names.py", "from gpuhub.hub import hubconfig", 0, "BROKEN"),
    ("gpuhub/tasks/deployment.py", "import gpuhub.services.usercli", 0, "BROKEN"),
    ("gpuhub/hub/spawner.py", "from gpuhub.broker import policy", 0, "BROKEN"),
    ("gpuhub/labfirewall/service.py", "from gpuhub.core import names", 0, "BROKEN"),
    ("gpuhub/tasks/composestack.py", "from gpuhub.tasks import project", 0, "BROKEN"),
    ("gpuhub/tasks/users.py", "from gpuhub.tasks import composestack", 0, "BROKEN"),
    ("gpuhub/tasks/users.py", "import prometheus_client", 0, "BROKEN"),
    ("gpuhub/core/settings.py", "import requests", 1, "gpuhub.core reaches requests"),
    ("gpuhub/broker/server.py", "import jupyterhub", 1, "gpuhub.broker reaches jupyterhub"),
    ("gpuhub/labfirewall/service.py", "import yaml", 1, "gpuhub.labfirewall reaches yaml"),
    ("gpuhub/hub/grants.py", "from gpuhub.hub import spawner", 1, "import cycle"),
]


@pytest.mark.parametrize("path, line, check, words", BREACHES,
                         ids=[f"{p}:{line}" for p, line, _, _ in BREACHES])
def test_each_border_fails_lint_when_crossed(tmp_path, path, line, check, words):
    copy = tmp_path / "tree"
    for name in ("gpuhub", "tools"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    source = copy / path
    source.write_text(source.read_text() + f"\n{line}  # crossing a border\n")
    result = checks(copy)[check]
    assert result.returncode != 0 and words in result.stdout, result.stdout + result.stderr
