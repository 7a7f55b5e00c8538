"""HTTPS: check the certificate and key `invoke up` hands the proxy; make a self-signed pair.

The proxy terminates TLS (docker-compose.tls.yml mounts TLS_CERT and TLS_KEY into it as
compose secrets); the hub behind it speaks plain HTTP on the labs network.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
from pathlib import Path

from invoke import task

from gpuhub.core import origins
from gpuhub.tasks.deployment import Project, fail
from gpuhub.tasks.project import load
from gpuhub.tasks.tlsfiles import check_files, files_digest, resolve  # noqa: F401 (tls.check_files)

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")


def subject_alt_names(hosts: list[str]) -> str:
    """``DNS:name`` / ``IP:address`` entries for openssl's subjectAltName."""
    entries = []
    for host in hosts:
        try:
            entries.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            if not _DNS_NAME.fullmatch(host) or len(host) > 253:
                raise fail(f"--host {host!r} is neither a DNS name (hub.example.org) nor an "
                           "IP address (192.0.2.10)") from None
            entries.append(f"DNS:{host}")
    return ",".join(entries)


def selfsigned_command(cert: Path, key: Path, hosts: list[str], days: int) -> str:
    """The ``openssl req -x509`` command for a self-signed pair (RSA 2048, SHA-256)."""
    return shlex.join([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes",
        "-days", str(days), "-subj", f"/CN={hosts[0]}",
        "-addext", f"subjectAltName={subject_alt_names(hosts)}",
        "-keyout", str(key), "-out", str(cert)])


def default_hosts(project: Project) -> list[str]:
    hosts = [project.settings.hub_domain, *DEFAULT_HOSTS]
    address = project.settings.hub_bind_address
    if address not in ("0.0.0.0", "::"):
        hosts.append(address)
    return list(dict.fromkeys(hosts))


def with_lab_names(hosts: list[str], project: Project) -> list[str]:
    """``hosts``, plus ``*.HUB_DOMAIN`` after HUB_DOMAIN when labs have their own origins
    (each lab is served at ``<user>.HUB_DOMAIN``)."""
    domain = project.settings.hub_domain
    if not origins.isolated(project.settings) or domain not in hosts:
        return hosts
    wildcard = f"*.{domain}"
    return list(dict.fromkeys([*hosts[:hosts.index(domain) + 1], wildcard, *hosts]))


@task(iterable=["host"],
      help={"host": "A name or IP address the certificate is for; repeat for more "
                    "(default: HUB_DOMAIN, localhost, 127.0.0.1 and HUB_BIND_ADDRESS if "
                    "specific); *.HUB_DOMAIN, where the labs are, is always added.",
            "days": "How many days the certificate is valid.",
            "output": "Folder to write the pair to (default: SECRETS_DIR).",
            "force": "Replace an existing pair of this project in that folder."})
def tls_selfsigned(c, host=None, days=365, output="", force=False):
    """Make a self-signed certificate and key for testing HTTPS; print the TLS_* lines for .env."""
    project = load()
    hosts = with_lab_names(list(host or []) or default_hosts(project), project)
    days = int(days)
    if days < 1:
        raise fail(f"--days {days} must be 1 or more")
    subject_alt_names(hosts)  # refuse a bad --host before anything is written
    if not shutil.which("openssl"):
        raise fail("openssl is not installed on this host: install it (e.g. `sudo apt-get "
                   "install openssl`), or set TLS_CERT and TLS_KEY to a pair you already have")
    folder = Path(output).resolve() if output else project.secrets_dir.resolve()
    cert = folder / f"{project.name}-tls-cert.pem"
    key = folder / f"{project.name}-tls-key.pem"
    existing = [str(p) for p in (cert, key) if p.exists()]
    if existing and not force:
        raise fail(f"{' and '.join(existing)} already exist(s); pass --force to replace the "
                   "pair (a running hub keeps serving the old one until `invoke up`)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The key file exists, mode 0600, before openssl writes into it: never readable by others.
    os.close(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    key.chmod(0o600)
    result = c.run(selfsigned_command(cert, key, hosts, days), hide=True, warn=True)
    if result.failed:
        lines = (result.stderr or "").strip().splitlines() or [f"exit code {result.return_code}"]
        raise fail(f"openssl could not make the pair: {lines[-1][-300:]}")
    key.chmod(0o600)
    print(f"wrote a self-signed certificate for {', '.join(hosts)} (valid {days} days) and its "
          f"key (mode 0600).\nBrowsers warn about it until you trust {cert}.\n"
          f"Put these lines in {project.env_file}, then run `invoke up`:\n"
          f"TLS_CERT={cert}\nTLS_KEY={key}")
