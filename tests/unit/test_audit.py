"""tools/audit.py (`nox -s audit`) with a stubbed runner: no Docker, no network.

The stub plays Docker (`pip list` in an image) and pip-audit (an advisory source that
answers, knows nothing, or cannot be reached), as the real ones print.
"""

import json
import subprocess
from pathlib import Path

import pytest

from tools import audit

HUB, LAB = "gpuhub-hub:latest", "gpuhub-lab:latest"
IMAGES = {
    HUB: [("jupyterhub", "5.5.4"), ("tornado", "6.4.1"), ("pip", "25.0")],
    LAB: [("jupyterlab", "4.6.6"), ("jupyter-server", "2.21.1"), ("conda", "24.1.2"),
          ("odd", "2023c-local")],
}
CANARY_ADVISORY = {"id": "GHSA-cw7p-q79f-m2v7", "fix_versions": ["1.5.0"],
                   "aliases": ["CVE-2021-41247"]}
TORNADO_ADVISORY = {"id": "GHSA-7cx3-6m66-7c5m", "fix_versions": ["6.5"],
                    "aliases": ["CVE-2025-47287"]}


def done(stdout: str = "", stderr: str = "", code: int = 0) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], code, stdout, stderr)


class Stub:
    """Docker and pip-audit as seen from the audit; records every command."""

    def __init__(self, source: str = "answers", advisories: dict | None = None):
        self.source = source  # answers | knows-nothing | unreachable
        self.advisories = {("jupyterhub", "1.3.0"): [CANARY_ADVISORY], **(advisories or {})}
        self.commands: list[list[str]] = []
        self.audited: list[list[tuple[str, str]]] = []

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess:
        self.commands.append(cmd)
        if cmd[:2] == ["docker", "run"]:
            image = cmd[cmd.index("--entrypoint") + 2]
            if image not in IMAGES:
                return done(stderr=f"Unable to find image '{image}' locally\n", code=125)
            return done(json.dumps([{"name": n, "version": v} for n, v in IMAGES[image]]))
        assert cmd[:3] == audit.PIP_AUDIT and "--disable-pip" in cmd and "--no-deps" in cmd
        lines = Path(cmd[cmd.index("--requirement") + 1]).read_text().splitlines()
        packages = [tuple(line.split("==")) for line in lines]
        self.audited.append(packages)
        if self.source == "unreachable":
            return done(stderr="Traceback (most recent call last):\n  ...\nrequests.exceptions."
                        "ConnectionError: HTTPSConnectionPool(host='api.osv.dev', port=443): "
                        "Failed to resolve 'api.osv.dev'\n", code=1)
        deps = []
        for name, version in packages:
            if self.source == "knows-nothing" or name == "conda":
                deps.append({"name": name, "skip_reason": "Dependency not found on PyPI and "
                             f"could not be audited: {name} ({version})"})
            else:
                deps.append({"name": name, "version": version,
                             "vulns": self.advisories.get((name, version), [])})
        found = any(d.get("vulns") for d in deps)
        return done(json.dumps({"dependencies": deps, "fixes": []}), code=int(found))


def main(stub: Stub, *args: str) -> int:
    return audit.main(["--image", HUB, "--image", LAB, *args], runner=stub)


def test_unreachable_advisory_source_is_no_verdict_never_a_pass(capsys):
    stub = Stub("unreachable")
    assert main(stub, "--service", "osv") == audit.NO_VERDICT
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audit: NO VERDICT: cannot reach the "
                                                   "advisory source (osv)"), err
    assert "Failed to resolve 'api.osv.dev'" in lines[0]
    assert not any(c[0] == "docker" for c in stub.commands), "no image is looked at"


def test_a_source_that_knows_no_advisory_is_no_verdict(capsys):
    # What a PyPI mirror without per-release JSON pages looks like: pip-audit skips every
    # package and says "No known vulnerabilities found", exit status 0.
    assert main(Stub("knows-nothing")) == audit.NO_VERDICT
    err = capsys.readouterr().err.strip()
    assert err.startswith("audit: NO VERDICT: the advisory source (pypi) does not answer: it "
                          "knows no advisory of jupyterhub 1.3.0"), err
    assert "\n" not in err


def test_found_vulnerabilities_are_listed_and_fail(capsys):
    stub = Stub(advisories={("tornado", "6.4.1"): [TORNADO_ADVISORY]})
    assert main(stub) == audit.FOUND
    out, err = capsys.readouterr()
    assert (f"{HUB}: 3 packages audited against pypi, 1 known vulnerabilities:\n"
            "  tornado 6.4.1: GHSA-7cx3-6m66-7c5m (CVE-2025-47287), fixed in 6.5\n") in out
    assert f"{LAB}: 2 packages audited against pypi, no known vulnerabilities" in out
    assert err.strip() == f"audit: known vulnerabilities: 1 in {HUB} (listed above)"


def test_clean_images_pass_and_say_what_was_not_audited(capsys):
    stub = Stub()
    assert main(stub) == audit.CLEAN
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[-1] == f"audit: no known vulnerabilities in {HUB}, {LAB} (pypi)"
    assert "  not audited (2):" in out
    assert "    odd 2023c-local: not a PEP 440 version" in out
    assert "    conda: Dependency not found on PyPI" in out
    # First the canary, then each image's exact releases; the odd version is not sent.
    assert stub.audited == [[("jupyterhub", "1.3.0")], IMAGES[HUB], IMAGES[LAB][:3]]
    assert [c for c in stub.commands if c[0] == "docker"] == [
        ["docker", "run", "--rm", "--entrypoint", "python3", image, "-m", "pip", "list",
         "--format=json", "--disable-pip-version-check"] for image in (HUB, LAB)]


def test_an_image_that_is_not_built_is_no_verdict(capsys):
    assert audit.main(["--image", "gpuhub-lab:nope"], runner=Stub()) == audit.NO_VERDICT
    err = capsys.readouterr().err
    assert "cannot list the Python packages in gpuhub-lab:nope (Unable to find image" in err
    assert "invoke build" in err


def test_the_images_are_the_settings_hub_image_and_lab_image(env_file, monkeypatch):
    env_file(HUB_IMAGE="hub:test", LAB_IMAGE="lab:test")
    assert audit.default_images() == ["hub:test", "lab:test"]


@pytest.mark.parametrize("service", audit.SERVICES)
def test_the_service_reaches_pip_audit(service):
    stub = Stub()
    audit.check_source(service, stub)
    cmd = stub.commands[0]
    assert cmd[cmd.index("--vulnerability-service") + 1] == service
