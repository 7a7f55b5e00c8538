"""Known vulnerabilities in the Python packages of the built hub and lab images.

``nox -s audit`` runs it: ``python -m tools.audit [--service osv] [--image IMAGE ...]``.
For each image (the settings' HUB_IMAGE and LAB_IMAGE, as ``invoke build`` tagged them),
``pip list`` inside it says what is installed, and pip-audit looks every ``name==version``
up in an advisory source: PyPI's vulnerability data (the default) or OSV's database.

An audit needs a source that answers. pip-audit says "No known vulnerabilities found" even
when its source knew none of the packages (a PyPI mirror without the per-release JSON
pages skips every one of them), so the source is first asked about a release with
published advisories. A source that cannot be reached, or does not know those, gives no
verdict: one line on stderr says so, and the exit status is 2, never 0.

Exit status: 0 no known vulnerabilities, 1 some found (each listed), 2 no verdict.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

Runner = Callable[[list[str]], subprocess.CompletedProcess]

CLEAN, FOUND, NO_VERDICT = 0, 1, 2
SERVICES = ("pypi", "osv")
# A release with published advisories (fixed in JupyterHub 1.4 and later): a source that
# reports none for it is not answering, whatever it says about the images.
CANARY = ("jupyterhub", "1.3.0")
PIP_AUDIT = [sys.executable, "-m", "pip_audit"]


class NoVerdict(Exception):
    """The audit could not be done; the message says why, in one line."""


@dataclass(frozen=True)
class Vulnerability:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fixed_in: tuple[str, ...] = ()

    def line(self) -> str:
        also = f" ({', '.join(self.aliases)})" if self.aliases else ""
        fix = f"fixed in {', '.join(self.fixed_in)}" if self.fixed_in else "no fixed release"
        return f"{self.package} {self.version}: {self.id}{also}, {fix}"


@dataclass
class Report:
    """pip-audit's answer for one list of packages."""

    audited: int = 0
    vulnerabilities: list[Vulnerability] = field(default_factory=list)
    not_audited: list[str] = field(default_factory=list)  # "name version: why"


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def installed(image: str, runner: Runner = run) -> list[tuple[str, str]]:
    """(name, version) of every Python package that pip sees in ``image``."""
    result = runner(["docker", "run", "--rm", "--entrypoint", "python3", image, "-m", "pip",
                     "list", "--format=json", "--disable-pip-version-check"])
    if result.returncode != 0:
        why = _last_line(result.stderr) or f"exit status {result.returncode}"
        raise NoVerdict(f"cannot list the Python packages in {image} ({why}); build it with "
                        "`invoke build`, or name another with --image")
    try:
        return [(p["name"], p["version"]) for p in json.loads(result.stdout)]
    except (ValueError, TypeError, KeyError):
        raise NoVerdict(f"`pip list` in {image} did not print a JSON list of packages") from None


def _pep440(version: str) -> bool:
    from packaging.version import InvalidVersion, Version  # pip-audit's own dependency

    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def audit(packages: Iterable[tuple[str, str]], service: str, runner: Runner = run) -> Report:
    """What ``service`` knows about these exact releases (nothing is installed or resolved)."""
    report = Report()
    exact = []
    for name, version in packages:
        if _pep440(version):
            exact.append((name, version))
        else:  # pip-audit would refuse the whole list for it
            report.not_audited.append(f"{name} {version}: not a PEP 440 version")
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{name}=={version}\n" for name, version in exact))
        result = runner([*PIP_AUDIT, "--requirement", str(requirements), "--no-deps",
                         "--disable-pip", "--format", "json", "--desc", "off",
                         "--vulnerability-service", service, "--progress-spinner", "off"])
    try:
        dependencies = json.loads(result.stdout)["dependencies"]
    except (ValueError, TypeError, KeyError):
        why = _last_line(result.stderr) or f"exit status {result.returncode}, no report"
        raise NoVerdict(f"cannot reach the advisory source ({service}): pip-audit gave no "
                        f"report ({why})") from None
    for dep in dependencies:
        if "skip_reason" in dep:
            report.not_audited.append(f"{dep['name']}: {dep['skip_reason']}")
            continue
        report.audited += 1
        report.vulnerabilities += [
            Vulnerability(dep["name"], dep["version"], vuln["id"],
                          tuple(vuln.get("aliases") or ()), tuple(vuln.get("fix_versions") or ()))
            for vuln in dep.get("vulns") or ()]
    return report


def check_source(service: str, runner: Runner = run) -> None:
    """Raise NoVerdict unless ``service`` knows the advisories of a release that has some."""
    report = audit([CANARY], service, runner)
    if not report.vulnerabilities:
        why = report.not_audited[0] if report.not_audited else "it reported none"
        raise NoVerdict(f"the advisory source ({service}) does not answer: it knows no "
                        f"advisory of {CANARY[0]} {CANARY[1]}, which has published ones ({why})")


def default_images() -> list[str]:
    """HUB_IMAGE and LAB_IMAGE from the settings file, as every task reads it."""
    from invoke.exceptions import Exit

    from gpuhub.tasks.project import load

    try:
        settings = load().settings
    except Exit as err:
        raise NoVerdict(str(err.message)) from None
    return [settings.hub_image, settings.lab_image]


def summary(image: str, report: Report, service: str) -> list[str]:
    """The lines printed for one image."""
    found = len(report.vulnerabilities)
    verdict = f"{found} known vulnerabilities:" if found else "no known vulnerabilities"
    lines = [f"{image}: {report.audited} packages audited against {service}, {verdict}"]
    lines += [f"  {v.line()}" for v in report.vulnerabilities]
    if report.not_audited:
        lines.append(f"  not audited ({len(report.not_audited)}):")
        lines += [f"    {why}" for why in report.not_audited]
    return lines


def main(argv: list[str] | None = None, runner: Runner = run) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.audit", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", choices=SERVICES, default="pypi",
                        help="advisory source (default: pypi, PyPI's vulnerability data)")
    parser.add_argument("--image", action="append", default=[],
                        help="image to audit, instead of HUB_IMAGE and LAB_IMAGE (repeatable)")
    args = parser.parse_args(argv)
    try:
        if runner is run and importlib.util.find_spec("pip_audit") is None:
            raise NoVerdict("pip-audit is not installed in this Python: run `nox -s audit`")
        images = args.image or default_images()
        check_source(args.service, runner)
        reports = {image: audit(installed(image, runner), args.service, runner)
                   for image in images}
    except NoVerdict as err:
        print(f"audit: NO VERDICT: {err}", file=sys.stderr)
        return NO_VERDICT
    for image, report in reports.items():
        print("\n".join(summary(image, report, args.service)))
    found = {image: len(r.vulnerabilities) for image, r in reports.items() if r.vulnerabilities}
    if found:
        where = ", ".join(f"{n} in {image}" for image, n in found.items())
        print(f"audit: known vulnerabilities: {where} (listed above)", file=sys.stderr)
        return FOUND
    print(f"audit: no known vulnerabilities in {', '.join(reports)} ({args.service})")
    return CLEAN


if __name__ == "__main__":
    sys.exit(main())
