"""A real LDAP directory for the tests: Debian's slapd, started by the test on an address
it owns (loopback, or the gateway of a Docker network the test created), with TLS from a
CA the test makes, and a small directory of people and groups (DIRECTORY below).

``ldaps://`` on one port, ``ldap://`` (StartTLS) on another. The ppolicy overlay is on, so
the locked account is locked the way OpenLDAP locks accounts (its bind is refused).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.stack import free_port
from support.serverprocess import ServerProcess, port_open
from support.testca import issue, make_ca

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SUFFIX = "dc=gpuhub,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SEARCH_DN = f"cn=search,{SUFFIX}"
SEARCH_PASSWORD = "search-account-pw-5d1f"  # the leak tests look for it everywhere

# uid: (password, groups). JSmith's name needs normalising (jsmith); o.brien's cannot be
# a gpuhub user name; carol is in no allowed group; locked is locked (ppolicy).
PEOPLE_ENTRIES = {
    "alice": ("alice-ldap-pw-1", ["gpu-users", "students"]),
    "JSmith": ("jsmith-ldap-pw-1", ["gpu-users"]),
    "boss": ("boss-ldap-pw-1", ["gpu-users", "lab-admins"]),
    "carol": ("carol-ldap-pw-1", ["visitors"]),
    "locked": ("locked-ldap-pw-1", ["gpu-users"]),
    "o.brien": ("obrien-ldap-pw-1", ["gpu-users"]),
}
# Three kinds of group, as directories hold them.
GROUP_KINDS = {"gpu-users": "groupOfNames", "lab-admins": "groupOfUniqueNames",
               "students": "posixGroup", "visitors": "groupOfNames"}


def available() -> bool:
    return Path(SLAPD).exists() and Path(SLAPADD).exists() and bool(shutil.which("openssl"))


MISSING = "slapd: apt-get install slapd ldap-utils (/usr/sbin/slapd, slapadd and openssl)"


def require() -> None:
    """Fail the test (never a quiet skip) where slapd is missing: .ci/provision installs it."""
    if not available():
        pytest.fail(f"not installed: {MISSING} (.ci/provision installs it)", pytrace=False)


def _ldif() -> str:
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: gpuhub\no: gpuhub test",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
        f"dn: ou=policies,{SUFFIX}\nobjectClass: organizationalUnit\nou: policies",
        (f"dn: cn=default,ou=policies,{SUFFIX}\nobjectClass: device\nobjectClass: pwdPolicy\n"
         "cn: default\npwdAttribute: userPassword\npwdLockout: TRUE\npwdMaxFailure: 0"),
        (f"dn: {SEARCH_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
         f"cn: search\nuserPassword: {SEARCH_PASSWORD}"),
    ]
    for number, (uid, (password, _groups)) in enumerate(PEOPLE_ENTRIES.items(), 2000):
        entry = (f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
                 f"uid: {uid}\ncn: {uid}\nsn: {uid}\nuidNumber: {number}\ngidNumber: {number}\n"
                 f"homeDirectory: /home/{uid}\nuserPassword: {password}")
        if uid == "locked":  # OpenLDAP's permanent lock
            entry += "\npwdAccountLockedTime: 000001010000Z"
        entries.append(entry)
    for number, (group, kind) in enumerate(GROUP_KINDS.items(), 3000):
        members = [uid for uid, (_pw, groups) in PEOPLE_ENTRIES.items() if group in groups]
        entry = f"dn: cn={group},{GROUPS}\nobjectClass: {kind}\ncn: {group}"
        if kind == "posixGroup":
            entry += f"\ngidNumber: {number}" + "".join(f"\nmemberUid: {m}" for m in members)
        else:
            attribute = "uniqueMember" if kind == "groupOfUniqueNames" else "member"
            entry += "".join(f"\n{attribute}: uid={m},{PEOPLE}" for m in members)
        entries.append(entry)
    return "\n\n".join(entries) + "\n"


@dataclass
class Directory(ServerProcess):
    """A running slapd: ``ldaps_url`` and ``starttls_url``, trusted by ``ca_file``."""

    host: str = ""
    ldaps_port: int = 0
    starttls_port: int = 0
    ca_file: Path = Path()

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}:{self.ldaps_port}"

    @property
    def starttls_url(self) -> str:
        return f"ldap://{self.host}:{self.starttls_port}"


def start(folder: Path, host: str = "127.0.0.1", netns: str | None = None) -> Directory:
    """Build the directory under ``folder`` and start slapd on ``host`` (two free ports),
    in the network namespace ``netns`` if given (a Swarm test node's)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder / "tls", "gpuhub-test-directory-ca")
    cert, key = issue(folder / "tls", ca, "slapd", [host])
    data = folder / "data"
    data.mkdir(exist_ok=True)
    config = folder / "slapd.conf"
    config.write_text(textwrap.dedent(f"""\
        include /etc/ldap/schema/core.schema
        include /etc/ldap/schema/cosine.schema
        include /etc/ldap/schema/inetorgperson.schema
        include /etc/ldap/schema/nis.schema
        modulepath /usr/lib/ldap
        moduleload back_mdb
        moduleload ppolicy
        pidfile {folder}/slapd.pid
        TLSCACertificateFile {ca[0]}
        TLSCertificateFile {cert}
        TLSCertificateKeyFile {key}
        # No password over a connection without TLS (StartTLS first on ldap://).
        security simple_bind=128
        database mdb
        maxsize 104857600
        suffix "{SUFFIX}"
        rootdn "cn=admin,{SUFFIX}"
        directory {data}
        overlay ppolicy
        ppolicy_default "cn=default,ou=policies,{SUFFIX}"
        access to attrs=userPassword by anonymous auth by * none
        access to * by dn.exact="{SEARCH_DN}" read by self read by * none
        """))
    (folder / "data.ldif").write_text(_ldif())
    subprocess.run([SLAPADD, "-q", "-f", str(config), "-l", str(folder / "data.ldif")],
                   check=True, capture_output=True, text=True)
    ldaps, starttls = free_port(), free_port()
    log = open(folder / "slapd.log", "w")
    inside = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    process = subprocess.Popen(
        [*inside, SLAPD, "-d", "stats", "-f", str(config), "-h",
         f"ldaps://{host}:{ldaps}/ ldap://{host}:{starttls}/"],
        stdout=log, stderr=subprocess.STDOUT)
    directory = Directory(process, folder / "slapd.log", host, ldaps, starttls, ca[0])

    def listening() -> bool:
        if netns:
            return subprocess.run([*inside, sys.executable, "-c",
                                   f"import socket; socket.create_connection(({host!r}, {ldaps}), 1)"],
                                  capture_output=True).returncode == 0
        return port_open(host, ldaps)

    directory.wait_until_ready(listening, "slapd to listen", timeout=30)
    return directory
