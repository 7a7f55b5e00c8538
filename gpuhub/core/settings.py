"""Every gpuhub setting in one place: name, default, type, meaning, and validation.

Settings are read from the ``.env`` file (``GPUHUB_ENV_FILE`` names another one).
Invoke validates them on the host before it touches Docker; the hub validates the same
file again at start-up (compose passes it in with ``env_file``), so a bad value stops
both with the same one-line message: the setting, the bad value and how to fix it.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuhub.core import versions
from gpuhub.core.accounts import check_username
from gpuhub.core.allocator import EXCLUSIVE, POLICIES, one_lab_per_gpu
from gpuhub.core.gpus import OLD_MIG_ID
from gpuhub.core.lablimits import parse_memory

# Set in one place, constraints.txt, next to the versions of everything installed with it.
DEFAULT_JUPYTERHUB_VERSION = versions.pinned("jupyterhub")
AUTHENTICATORS = ("native", "ldap", "oidc")
# A directory group or claim value that becomes a hub group (GPU_LIMITS names it @group).
GROUP_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}"


class SettingsError(ValueError):
    """One or more settings are invalid; ``str()`` lists each problem on its own line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# --- parsers: each takes the raw string and returns a value or raises ValueError(fix) ---

def _text(raw: str) -> str:
    return raw.strip()


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ValueError("must be a whole number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise ValueError("must be a whole number from 1 to 65535")
    return port


def _seconds(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be a whole number of seconds (0 turns it off)") from None
    if value < 0:
        raise ValueError("must be 0 or more seconds")
    return value


def _positive_seconds(raw: str) -> int:
    value = _seconds(raw)
    if value == 0:
        raise ValueError("must be at least 1 second")
    return value


def _count(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("must be a whole number, 1 or more")
    return int(raw)


def _percent(raw: str) -> int:
    if not raw.isdigit() or int(raw) > 100:
        raise ValueError("must be a whole number of percent from 0 to 100")
    return int(raw)


def _auto_or_count(raw: str) -> str | int:
    value = raw.strip().lower()
    if value == "auto":
        return value
    if not value.isdigit():
        raise ValueError("must be auto, 0 (no limit) or a whole number such as 4")
    return int(value)


def _ip(raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ValueError("must be an IP address such as 0.0.0.0 or 127.0.0.1") from None
    return raw


def _domain(raw: str) -> str:
    """A DNS name (or an IP address, which the settings refuse unless labs share the
    hub's origin): lowercase, no scheme, port or path."""
    value = raw.lower().rstrip(".")
    if _is_ip(value):
        return value
    labels = value.split(".")
    if len(value) > 253 or not all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label)
                                   for label in labels):
        raise ValueError("must be the DNS name users open the hub at, such as "
                         "gpu.example.org or localhost (no http://, port or path)")
    return value


def _public_url(raw: str) -> str:
    """Empty, or ``http(s)://name[:port]`` (no path): where users reach the hub when
    something in front of HUB_PORT (a TLS terminator, a tunnel) changes the scheme or port."""
    if not raw:
        return ""
    how = "must be empty or the hub's public address, such as https://gpu.example.org"
    try:
        url = urllib.parse.urlsplit(raw)
        url.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ValueError(how) from None
    if url.scheme not in ("http", "https") or not url.hostname or url.path.strip("/") \
            or url.query or url.fragment or url.username or url.password:
        raise ValueError(how + " (no path)")
    return raw.rstrip("/").lower()


def _project_name(raw: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", raw):
        raise ValueError(
            "must be lowercase letters, digits, '_' or '-', starting with a letter or digit"
        )
    return raw


def _usernames(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    for name in names:
        check_username(name)
    if len(set(names)) != len(names):
        raise ValueError("lists a user twice")
    return names


def _lab_cpus(raw: str) -> str | float:
    value = raw.lower()
    if value in ("auto", "none"):
        return value
    how = "must be auto, none (both: no quota) or a number of CPUs above 0 such as 2 or 0.5"
    try:
        cpus = float(raw)
    except ValueError:
        raise ValueError(how) from None
    if not 0 < cpus < float("inf"):  # also refuses nan
        raise ValueError(how)
    return cpus


def _lab_memory(raw: str) -> str:
    value = raw.lower()
    if value in ("auto", "none"):
        return value
    return parse_memory(raw, "auto (the host's memory less a reserve), none (no limit)")


def _work_quota(raw: str) -> str:
    if raw.lower() == "none":
        return "none"
    return parse_memory(raw, "none (no quota)")


def _lab_disk_limit(raw: str) -> str:
    if raw.lower() in ("auto", "none"):
        return raw.lower()
    return parse_memory(raw, "auto (where Docker can), none (no limit)")


def _lab_tmp_size(raw: str) -> str:
    if raw.lower() == "none":
        return "none"
    return parse_memory(raw, "none (/tmp in the writable layer)")


def _optional_abs_path(raw: str) -> str | None:
    if not raw:
        return None
    if not raw.startswith("/"):
        raise ValueError("must be an absolute path on the host, or empty")
    return raw


def _optional_port(raw: str) -> int | None:
    return _port(raw) if raw else None


def _optional_file(raw: str) -> str:
    # Compose resolves a relative path against the repository (its project directory),
    # and expands no "~": refuse it here rather than have compose make a folder of it.
    if raw.startswith("~"):
        raise ValueError("write the full path (~ is not expanded), or one relative to the "
                         "repository, or leave it empty")
    return raw


def _gpu_devices(raw: str) -> str:
    value = raw.strip()
    if value in ("auto", "none"):
        return value
    ids = [d.strip() for d in value.split(",")]
    if not value or any(not d for d in ids):
        raise ValueError("must be auto, none, or a comma-separated list of GPU indices or UUIDs")
    for dev in ids:
        if OLD_MIG_ID.fullmatch(dev):
            # R450/R460 named MIG instances so; the toolkit on R470+ refuses it (unknown device).
            raise ValueError(
                f"{dev!r} is the MIG ID form drivers before R470 used; name the instance by "
                "its MIG-<uuid> from `nvidia-smi -L` or as <gpu>:<mig> (e.g. 0:1)")
        if not (dev.isdigit() or re.fullmatch(r"\d+:\d+", dev)
                or re.fullmatch(r"(GPU|MIG)-[0-9A-Za-z-]+", dev)):
            raise ValueError(
                f"{dev!r} is neither a GPU index (0, 1, …), a MIG instance (0:1), nor a "
                "GPU/MIG UUID (GPU-…, MIG-…)"
            )
    if len(set(ids)) != len(ids):
        raise ValueError("lists a GPU twice")
    return ",".join(ids)


def _policy(raw: str) -> str:
    if raw not in POLICIES:
        raise ValueError(f"must be {', '.join(POLICIES[:-1])} or {POLICIES[-1]}")
    return raw


def _limits(raw: str) -> dict[str, int]:
    from gpuhub.core.allocator import parse_assignments

    how = "write e.g. alice=2;@students=1;*=1 (user, @group or * = max GPUs per lab)"
    result = {}
    for key, value in parse_assignments(raw, how).items():
        if key != "*" and not (key.startswith("@") and len(key) > 1):
            check_username(key)
        if not value.isdigit():
            raise ValueError(f"limit {value!r} for {key!r} is not a whole number; {how}")
        result[key] = int(value)
    return result


def _pins(raw: str) -> dict[str, list[str]]:
    from gpuhub.core.allocator import parse_assignments

    how = "write e.g. alice=2;bob=0,1 (user = GPU indices or UUIDs)"
    result = {}
    for user, value in parse_assignments(raw, how).items():
        check_username(user)
        result[user] = _gpu_devices(value).split(",")
    return result


def _yes_no_auto(raw: str) -> str:
    value = raw.lower()
    if value not in ("auto", "yes", "no"):
        raise ValueError("must be auto, yes or no")
    return value


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise ValueError("must be true or false")


def _cidrs(raw: str) -> tuple[str, ...]:
    how = "write IPv4 networks such as 10.0.0.0/8,203.0.113.7 (comma-separated), or leave it empty"
    result = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item)
        except ValueError:
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a network; {how}") from None
            raise ValueError(f"{item!r} has host bits set: write {loose} for the whole "
                             "network, or the address alone for one host") from None
        if network.version != 4:
            raise ValueError(f"{item!r} is IPv6; labs have no IPv6 (Docker gives them none "
                             f"unless the labs network enables it); {how}")
        result.append(str(network))
    if len(set(result)) != len(result):
        raise ValueError("lists a network twice")
    return tuple(result)


def _database_url(raw: str) -> str:
    if raw and not re.match(r"^(sqlite|postgresql(\+\w+)?)://", raw):
        raise ValueError("must start with sqlite:// or postgresql://, or be empty for SQLite")
    return raw


def _mode(raw: str) -> str:
    value = raw.lower()
    if value not in ("compose", "swarm"):
        raise ValueError("must be compose (one Docker host) or swarm (a Docker Swarm of "
                         "GPU nodes)")
    return value


def _registry(raw: str) -> str:
    if raw and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)*", raw):
        raise ValueError("must be a registry host[:port][/path] such as "
                         "registry.example.org:5000/gpuhub, without a scheme or an image name")
    return raw


def _resource_kind(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", raw):
        raise ValueError("must be a Swarm generic resource name such as NVIDIA-GPU "
                         "(letters, digits, '-' and '_')")
    return raw


def _abs_path(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError("must be an absolute path")
    return raw


def _log_level(raw: str) -> str:
    value = raw.upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return value


def _authenticator(raw: str) -> str:
    value = raw.lower()
    if value not in AUTHENTICATORS:
        raise ValueError("must be native (gpuhub's own accounts), ldap (an LDAP or Active "
                         "Directory server) or oidc (an OpenID Connect provider)")
    return value


def _group_names(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    for name in names:
        if name != "*" and not re.fullmatch(GROUP_NAME_PATTERN, name):
            raise ValueError(f"{name!r} is not a group name (letters, digits, '.', '_', '-' "
                             "and spaces; comma-separated), nor * (everyone)")
    if "*" in names and len(names) > 1:
        raise ValueError("* (everyone) stands alone")
    return names


def _ldap_url(raw: str) -> str:
    if not raw:
        return raw
    match = re.fullmatch(r"(ldaps?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?/?", raw)
    if not match or (match[3] and not 1 <= int(match[3]) <= 65535):
        raise ValueError("must be ldaps://host[:port] (TLS from the start, port 636) or "
                         "ldap://host[:port] (StartTLS before the password is sent, port 389); "
                         "plain LDAP without TLS is not offered")
    return raw


def _ldap_dn(raw: str) -> str:
    if raw and ("=" not in raw or "{" in raw or "}" in raw):
        raise ValueError("must be a DN such as ou=people,dc=example,dc=org")
    return raw


def _ldap_attribute(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", raw):
        raise ValueError("must be an attribute name such as uid (OpenLDAP) or "
                         "sAMAccountName (Active Directory)")
    return raw


def _ldap_filter(raw: str) -> str:
    if not raw:
        return raw
    depth = 0
    for ch in raw:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if not (raw.startswith("(") and raw.endswith(")")) or depth != 0 or "{" in raw or "}" in raw:
        raise ValueError("must be one LDAP filter in parentheses, such as "
                         "(objectClass=person) or (!(loginShell=/usr/sbin/nologin)), or empty")
    return raw


def _https_url(raw: str) -> str:
    if raw and not re.fullmatch(r"https://[A-Za-z0-9.\[\]:-]+(/[^\s?#]*)?", raw):
        raise ValueError("must be the provider's https:// issuer URL, such as "
                         "https://login.example.org/realms/lab (without a query)")
    return raw.rstrip("/")


def _claim(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]*", raw):
        raise ValueError("must be a claim name such as preferred_username or groups")
    return raw


def _scopes(raw: str) -> str:
    scopes = raw.split()
    if "openid" not in scopes or any(not re.fullmatch(r"[!#-\[\]-~]+", s) for s in scopes):
        raise ValueError("must be space-separated scopes that include openid, such as "
                         "openid profile email groups")
    return " ".join(scopes)


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    group: str


SETTINGS: tuple[Setting, ...] = (
    Setting("COMPOSE_PROJECT_NAME", "gpuhub", _project_name,
            "Compose project name; prefixes every container, volume and network gpuhub creates.",
            "Deployment"),
    Setting("HUB_PORT", "8000", _port,
            "Port on the host where JupyterHub is published.", "Deployment"),
    Setting("HUB_BIND_ADDRESS", "0.0.0.0", _ip,
            "Host address the port is published on (127.0.0.1 keeps it local).", "Deployment"),
    Setting("HUB_DOMAIN", "localhost", _domain,
            "The DNS name users open the hub at. Each user's lab is served on its own "
            "origin, <user>.HUB_DOMAIN, so a page in one lab cannot act as whoever opens "
            "it: the DNS needs a wildcard record (*.HUB_DOMAIN) and HTTPS a certificate "
            "that covers it. localhost serves this machine only (browsers resolve "
            "*.localhost to it).", "Deployment"),
    Setting("USERS_CAN_ACT_AS_EACH_OTHER", "false", _bool,
            "true: labs are served under the hub's own origin (HUB_DOMAIN may then be an "
            "IP address), and any user can act as anyone who opens a link into their lab, "
            "an admin included. Only for a group where everyone trusts everyone.",
            "Deployment"),
    Setting("HUB_PUBLIC_URL", "", _public_url,
            "Where users reach the hub when something in front of HUB_PORT changes the "
            "scheme or port (a reverse proxy that terminates HTTPS, a tunnel), such as "
            "https://gpu.example.org; its host must be HUB_DOMAIN, and *.HUB_DOMAIN must "
            "reach the same place. Empty: http(s)://HUB_DOMAIN:HUB_PORT.", "Deployment"),
    Setting("MODE", "compose", _mode,
            "compose: the hub and labs on this Docker host. swarm: the hub as a Swarm "
            "service on a manager and labs spread over the Swarm's nodes (needs REGISTRY "
            "and SWARM_HOMES).", "Deployment"),
    Setting("DOCKER_SOCKET", "/var/run/docker.sock", _abs_path,
            "The Docker engine's socket on the host, mounted into the hub (in swarm mode: "
            "the socket of the manager that runs the hub).", "Deployment"),
    Setting("SECRETS_DIR", "./.secrets", _text,
            "Folder for generated secrets (the proxy token), mode 0700; relative to the "
            "repository or absolute.", "Deployment"),
    Setting("TLS_CERT", "", _optional_file,
            "PEM certificate (chain) the proxy serves HTTPS with on HUB_PORT; set together "
            "with TLS_KEY, relative to the repository or absolute; empty: plain HTTP. "
            "`invoke tls-selfsigned` makes a pair for testing.", "Deployment"),
    Setting("TLS_KEY", "", _optional_file,
            "PEM private key of TLS_CERT (keep it mode 0600).", "Deployment"),
    Setting("HUB_HTTP_REDIRECT_PORT", "", _optional_port,
            "Host port where plain HTTP is redirected to HTTPS (needs TLS_CERT and TLS_KEY); "
            "empty: no redirect.", "Deployment"),
    Setting("ADMIN_USERS", "admin", _usernames,
            "Comma-separated admin user names. native: `invoke up` creates each missing one "
            "with a generated password, printed once. ldap and oidc: empty unless set (a "
            "directory account named admin is not made an admin by default).", "Users"),
    Setting("AUTHENTICATOR", "native", _authenticator,
            "How users log in: native (accounts `invoke adduser` makes, passwords in the hub "
            "database), ldap (an LDAP or Active Directory server, LDAP_*) or oidc (an OpenID "
            "Connect provider, OIDC_*). See docs/explanation/logins.md.", "Login"),
    Setting("ALLOWED_GROUPS", "", _group_names,
            "ldap and oidc: the directory groups whose members may log in, comma-separated, "
            "or * for every account the directory or provider accepts. Required there.",
            "Login"),
    Setting("ADMIN_GROUPS", "", _group_names,
            "ldap and oidc: members of these groups are hub admins (as are ADMIN_USERS); "
            "checked at each login.", "Login"),
    Setting("LDAP_URL", "", _ldap_url,
            "ldap: the server, ldaps://host[:port] (TLS) or ldap://host[:port] (StartTLS); "
            "its certificate is always checked.", "Login"),
    Setting("LDAP_CA_FILE", "", _optional_file,
            "ldap: PEM file of the CA(s) the server's certificate is checked against; empty: "
            "the hub image's public CAs.", "Login"),
    Setting("LDAP_BIND_DN", "", _ldap_dn,
            "ldap: the search account that finds a user's entry and groups (empty: "
            "anonymous search).", "Login"),
    Setting("LDAP_BIND_PASSWORD_FILE", "", _optional_file,
            "ldap: a file holding LDAP_BIND_DN's password (mode 0600; handed to the hub as a "
            "secret file, never an environment variable).", "Login"),
    Setting("LDAP_USER_BASE", "", _ldap_dn,
            "ldap: where user entries are searched, e.g. ou=people,dc=example,dc=org.",
            "Login"),
    Setting("LDAP_USER_ATTRIBUTE", "uid", _ldap_attribute,
            "ldap: the attribute holding the login name (Active Directory: sAMAccountName).",
            "Login"),
    Setting("LDAP_USER_FILTER", "", _ldap_filter,
            "ldap: only entries that also match this filter may log in, e.g. "
            "(!(userAccountControl:1.2.840.113556.1.4.803:=2)) to refuse disabled AD accounts.",
            "Login"),
    Setting("LDAP_GROUP_BASE", "", _ldap_dn,
            "ldap: where groups are searched; a group whose member, uniqueMember or memberUid "
            "names the user makes its cn one of the user's hub groups.", "Login"),
    Setting("OIDC_ISSUER", "", _https_url,
            "oidc: the provider's issuer URL; the hub reads its endpoints from "
            "/.well-known/openid-configuration at start.", "Login"),
    Setting("OIDC_CLIENT_ID", "", _text, "oidc: this hub's client id at the provider.", "Login"),
    Setting("OIDC_CLIENT_SECRET_FILE", "", _optional_file,
            "oidc: a file holding the client secret (mode 0600; a secret file in the hub).",
            "Login"),
    Setting("OIDC_CA_FILE", "", _optional_file,
            "oidc: PEM file of the CA(s) the provider's certificate is checked against; "
            "empty: the hub image's public CAs.", "Login"),
    Setting("OIDC_SCOPES", "openid profile email groups", _scopes,
            "oidc: the scopes the hub asks for (space-separated).", "Login"),
    Setting("OIDC_USERNAME_CLAIM", "preferred_username", _claim,
            "oidc: the claim that becomes the user name (made lowercase).", "Login"),
    Setting("OIDC_GROUPS_CLAIM", "groups", _claim,
            "oidc: the claim listing the user's groups (they become hub groups).", "Login"),
    Setting("JUPYTERHUB_VERSION", DEFAULT_JUPYTERHUB_VERSION, _text,
            "JupyterHub version installed in both images (hub and lab must match); the "
            "default is the pin in gpuhub/core/constraints.txt.", "Images"),
    Setting("HUB_BASE_IMAGE", f"quay.io/jupyterhub/jupyterhub:{DEFAULT_JUPYTERHUB_VERSION}", _text,
            "Base image of the hub image.", "Images"),
    Setting("LAB_BASE_IMAGE", "quay.io/jupyter/tensorflow-notebook:cuda-2026-09-01", _text,
            "Base image of the lab image (a Jupyter Docker Stacks image).", "Images"),
    Setting("HUB_IMAGE", "gpuhub-hub:latest", _text,
            "Tag of the hub image that `invoke build` makes.", "Images"),
    Setting("LAB_IMAGE", "gpuhub-lab:latest", _text,
            "Tag of the lab image that `invoke build` makes and labs run.", "Images"),
    Setting("REGISTRY", "", _registry,
            "Registry (host[:port][/path]) every Swarm node pulls the images from; "
            "`invoke build --push` pushes them there. Required in swarm mode.", "Images"),
    Setting("DEBIAN_BASE_IMAGE", "debian:bookworm-20251229-slim", _text,
            "Base image of the docker-proxy and lab-firewall images (Debian 12).", "Images"),
    Setting("DOCKER_PROXY_IMAGE", "gpuhub-docker-proxy:latest", _text,
            "Tag of the docker-proxy image that `invoke build` makes (DOCKER_SOCKET_PROXY).",
            "Images"),
    Setting("LAB_FIREWALL_IMAGE", "gpuhub-lab-firewall:latest", _text,
            "Tag of the lab-firewall image that `invoke build` makes (LAB_FIREWALL).", "Images"),
    Setting("EXTRA_CA_CERTS", "", _optional_abs_path,
            "PEM bundle trusted during image builds (TLS-intercepting proxies); "
            "never stored in an image.", "Images"),
    Setting("DATABASE_URL", "", _database_url,
            "Hub database; empty means SQLite on the hub-data volume.", "Hub"),
    Setting("IDLE_TIMEOUT", "3600", _seconds,
            "Seconds of inactivity after which a lab is stopped (0: never).", "Hub"),
    Setting("SPAWN_TIMEOUT", "300", _positive_seconds,
            "Seconds a lab may take to start before the spawn fails.", "Hub"),
    Setting("LOG_LEVEL", "INFO", _log_level, "Hub log level.", "Hub"),
    Setting("DOCKER_API_THREADS", "8", _count,
            "Parallel Docker API calls the hub makes for spawns (DockerSpawner alone: 1).",
            "Hub"),
    Setting("LAB_START_CONCURRENCY", "auto", _auto_or_count,
            "Labs that may boot at once; the others wait their turn (auto: all at once while "
            "lab-memory keeps the hub's services ahead of the labs for the CPU, one per CPU "
            "core without it, e.g. LABS_MEM_LIMIT=none; 0: no limit; not used in swarm "
            "mode).", "Hub"),
    Setting("LOGIN_MAX_FAILURES", "5", _count,
            "Failed logins after which a user is locked out for LOGIN_LOCKOUT_SECONDS.", "Hub"),
    Setting("LOGIN_LOCKOUT_SECONDS", "600", _positive_seconds,
            "How long a user stays locked out after too many failed logins.", "Hub"),
    Setting("LAB_CPU_LIMIT", "auto", _lab_cpus,
            "CPUs per lab, e.g. 4. auto: no quota (labs that compete get equal shares, and "
            "the hub's services get the CPU ahead of them; a quota would leave idle cores "
            "unused); none: the same. A profile's cpu_limit wins.", "Labs"),
    Setting("LAB_MEM_LIMIT", "auto", _lab_memory,
            "Memory per lab, e.g. 16G. auto: the Docker host's memory less 2 GiB or 10 % "
            "(whichever is more) for the system and the hub, so one lab cannot take it all; "
            "none: no limit. A profile's mem_limit wins.", "Labs"),
    Setting("LABS_MEM_LIMIT", "auto", _lab_memory,
            "Memory all labs together may use, e.g. 48G: they run under one parent cgroup "
            "with this limit, so the hub and the host keep the rest whatever the labs do. "
            "auto: the Docker host's memory less the reserve LAB_MEM_LIMIT=auto leaves; "
            "none: no such limit. Compose mode only (swarm mode: none).", "Labs"),
    Setting("LAB_PIDS_LIMIT", "1024", _count,
            "Most processes per lab (a fork bomb stops there).", "Labs"),
    Setting("SHARED_DATA_DIR", "", _optional_abs_path,
            "Host folder mounted read-only at ~/shared in every lab; empty for none.", "Labs"),
    Setting("WORK_QUOTA", "none", _work_quota,
            "Most disk each user's work folder may use, e.g. 50G, enforced by the "
            "filesystem (btrfs quotas on WORK_ROOT): a write past it fails with \"Disk quota "
            "exceeded\" in that lab only. none: no quota (work folders are Docker volumes on "
            "Docker's disk). Compose mode with DOCKER_SOCKET_PROXY=true only.", "Disk"),
    Setting("WORK_ROOT", "", _optional_abs_path,
            "WORK_QUOTA: the host folder work folders live in (one btrfs subvolume per user), "
            "on a btrfs filesystem with quotas on (`btrfs quota enable`), best not the disk "
            "Docker and the hub's database are on.", "Disk"),
    Setting("LAB_DISK_LIMIT", "auto", _lab_disk_limit,
            "Most disk each lab may write outside ~/work and /tmp (its writable layer: "
            "packages a user installs, caches), e.g. 20G. auto: 20G where Docker's storage "
            "can bound it (overlay2 on XFS with pquota, btrfs, zfs), else none, and `invoke "
            "up` says so; none: no limit. Compose mode only.", "Disk"),
    Setting("LAB_TMP_SIZE", "1G", _lab_tmp_size,
            "Size of each lab's /tmp, a memory-backed tmpfs that counts toward the lab's "
            "memory limit (so /tmp cannot fill a disk); none: /tmp in the lab's writable "
            "layer, on Docker's disk.", "Disk"),
    Setting("PROFILES_FILE", "./jupyterhub/profiles.yaml", _text,
            "Spawn profiles (zero-to-jupyterhub profileList shape), relative to the "
            "repository or absolute.", "Labs"),
    Setting("DOCKER_SOCKET_PROXY", "true", _bool,
            "true: the hub reaches Docker only through the docker-proxy service, gpuhub's "
            "Docker broker, which allows just the calls gpuhub makes and rebuilds each of "
            "them hardened; false: the hub mounts the Docker socket itself. "
            "Compose mode only (swarm mode: false).",
            "Host protection"),
    Setting("LAB_FIREWALL", "true", _bool,
            "true: the lab-firewall service stops labs from reaching the Docker host, each "
            "other, the cloud metadata addresses and LAB_BLOCKED_NETWORKS (its rules stay "
            "until `invoke down`); false: no such rules. "
            "Compose mode only (swarm mode: false).",
            "Host protection"),
    Setting("LAB_BLOCKED_NETWORKS", "", _cidrs,
            "More IPv4 networks labs may not reach, comma-separated (e.g. 10.0.0.0/8 for "
            "an office network); needs LAB_FIREWALL=true.", "Host protection"),
    Setting("GPU_DEVICES", "auto", _gpu_devices,
            "GPUs labs may use: auto (detect with nvidia-smi; a GPU in MIG mode counts as its "
            "MIG instances), none, or indices/UUIDs such as 0,1; a MIG instance as 0:1 or "
            "MIG-<uuid>.", "GPUs"),
    Setting("NVIDIA_SMI", "nvidia-smi", _text,
            "The nvidia-smi command `invoke up` uses to discover GPUs.", "GPUs"),
    Setting("NVIDIA_CTK", "nvidia-ctk", _text,
            "The nvidia-ctk command `invoke doctor` asks for the NVIDIA container toolkit's "
            "version.", "GPUs"),
    Setting("GPU_POLICY", EXCLUSIVE, _policy,
            "exclusive (each lab its own GPUs), shared (every GPU lab sees all GPUs) or "
            "round-robin (least-loaded first, sharing allowed).", "GPUs"),
    Setting("GPU_LIMITS", "", _limits,
            "Most GPUs per lab, e.g. alice=2;@students=1;*=2 (user, @group, * default).",
            "GPUs"),
    Setting("GPU_PINS", "", _pins,
            "Reserved GPUs, e.g. alice=2;bob=0,1: those GPUs go only to those users.", "GPUs"),
    Setting("GPU_ALLOW_GROWTH", "auto", _yes_no_auto,
            "Set TF_FORCE_GPU_ALLOW_GROWTH=true in labs (auto: yes for shared and "
            "round-robin).", "GPUs"),
    Setting("GPU_LINE_TIMEOUT", "1800", _seconds,
            "When no GPU is free, a start waits in line this many seconds for one (first "
            "come, first served) before it gives up; 0: refuse at once.", "GPUs"),
    Setting("GPU_LINE_MAX", "20", _count,
            "Most users waiting in line for a GPU; the next one is refused with a message.",
            "GPUs"),
    Setting("GPU_IDLE_TIMEOUT", "3600", _seconds,
            "A GPU lab whose GPUs have all been idle (under GPU_IDLE_UTILISATION) this many "
            "seconds is stopped, its files kept, and the user told why; 0: never.", "GPUs"),
    Setting("GPU_IDLE_TIMEOUT_WHILE_WAITING", "900", _seconds,
            "The same, while someone waits in line for a GPU (at most GPU_IDLE_TIMEOUT); "
            "0: as GPU_IDLE_TIMEOUT.", "GPUs"),
    Setting("GPU_SAMPLE_INTERVAL", "5", _positive_seconds,
            "Seconds between two readings of the GPUs' utilisation and memory by the "
            "gpu-sampler service (the admin page, `invoke gpus` and the metrics show them).",
            "GPUs"),
    Setting("GPU_IDLE_UTILISATION", "5", _percent,
            "A GPU below this utilisation (percent) counts as idle; the admin page and the "
            "metrics say for how long.", "GPUs"),
    Setting("SWARM_HOMES", "", _optional_abs_path,
            "Swarm mode: a shared folder (NFS by default, see docs/howto/swarm.md) mounted at this same "
            "path on every node; each user's work folder is <path>/<user>.", "Swarm"),
    Setting("SWARM_GPU_RESOURCE", "NVIDIA-GPU", _resource_kind,
            "Swarm mode: the generic resource name the nodes advertise their GPUs under "
            "(node-generic-resources in daemon.json).", "Swarm"),
)

BY_NAME = {s.name: s for s in SETTINGS}


class Settings:
    """Validated settings; attribute names are the setting names in lower case.

    Each is declared below with its parser's type, so editors and the type checker see
    every setting (tests/unit/test_settings.py checks the list against ``SETTINGS``).
    Read-only: made once by :func:`validate`.
    """

    __slots__ = ("values",)
    values: Mapping[str, Any]

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "values", values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"settings are read-only ({name})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self.values == other.values

    __hash__ = None  # type: ignore[assignment]

    if TYPE_CHECKING:  # what __getattr__ returns, by setting; not dataclass fields
        compose_project_name: str
        hub_port: int
        hub_bind_address: str
        hub_domain: str
        users_can_act_as_each_other: bool
        hub_public_url: str
        mode: str
        docker_socket: str
        secrets_dir: str
        tls_cert: str
        tls_key: str
        hub_http_redirect_port: int | None
        admin_users: tuple[str, ...]
        authenticator: str
        allowed_groups: tuple[str, ...]
        admin_groups: tuple[str, ...]
        ldap_url: str
        ldap_ca_file: str
        ldap_bind_dn: str
        ldap_bind_password_file: str
        ldap_user_base: str
        ldap_user_attribute: str
        ldap_user_filter: str
        ldap_group_base: str
        oidc_issuer: str
        oidc_client_id: str
        oidc_client_secret_file: str
        oidc_ca_file: str
        oidc_scopes: str
        oidc_username_claim: str
        oidc_groups_claim: str
        jupyterhub_version: str
        hub_base_image: str
        lab_base_image: str
        hub_image: str
        lab_image: str
        registry: str
        debian_base_image: str
        docker_proxy_image: str
        lab_firewall_image: str
        extra_ca_certs: str | None
        database_url: str
        idle_timeout: int
        spawn_timeout: int
        log_level: str
        docker_api_threads: int
        lab_start_concurrency: str | int
        login_max_failures: int
        login_lockout_seconds: int
        lab_cpu_limit: str | float
        lab_mem_limit: str
        labs_mem_limit: str
        lab_pids_limit: int
        shared_data_dir: str | None
        work_quota: str
        work_root: str | None
        lab_disk_limit: str
        lab_tmp_size: str
        profiles_file: str
        docker_socket_proxy: bool
        lab_firewall: bool
        lab_blocked_networks: tuple[str, ...]
        gpu_devices: str
        nvidia_smi: str
        nvidia_ctk: str
        gpu_policy: str
        gpu_limits: dict[str, int]
        gpu_pins: dict[str, list[str]]
        gpu_allow_growth: str
        gpu_line_timeout: int
        gpu_line_max: int
        gpu_idle_timeout: int
        gpu_idle_timeout_while_waiting: int
        gpu_sample_interval: int
        gpu_idle_utilisation: int
        swarm_homes: str | None
        swarm_gpu_resource: str

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name.upper()]
        except KeyError:
            raise AttributeError(name) from None

    def raw_env(self) -> dict[str, str]:
        """The settings as strings, defaults filled in (what compose interpolates)."""
        return {k: _to_env(v) for k, v in self.values.items()}


def _to_env(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return ";".join(f"{k}={','.join(v) if isinstance(v, list) else v}"
                        for k, v in value.items())
    return str(value)


# Settings that were renamed (one word per concept: the *line* of users waiting for a GPU).
# An admin's .env may still say the old name: it is read as the new one.
RENAMED = {"GPU_QUEUE_TIMEOUT": "GPU_LINE_TIMEOUT", "GPU_QUEUE_MAX": "GPU_LINE_MAX",
           "GPU_IDLE_TIMEOUT_WHEN_QUEUED": "GPU_IDLE_TIMEOUT_WHILE_WAITING"}


def _renamed(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env`` with old names read as the new ones; a problem where both disagree."""
    env, problems = dict(env), []
    for old, new in RENAMED.items():
        if old not in env:
            continue
        if new in env and env[new].strip() != env[old].strip():
            problems.append(f"{old}={env[old]!r} and {new}={env[new]!r} in the settings: "
                            f"{old} is the old name of {new}; keep only {new}")
        env.setdefault(new, env[old])
    return env, problems


def validate(env: Mapping[str, str]) -> Settings:
    """Parse every setting from ``env`` (defaults fill the gaps); raise SettingsError."""
    env, problems = _renamed(env)
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = env.get(s.name)
        raw = s.default if raw is None else raw.strip()
        try:
            values[s.name] = s.parse(raw)
        except ValueError as err:
            problems.append(f"{s.name}={raw!r} in the settings: {err}. ({s.help})")
    if not problems:  # combinations are checked once every value parses
        _mode_defaults(values, env)
        problems = _combination_problems(values, env)
    if problems:
        raise SettingsError(problems)
    return Settings(values)


# Run as compose services beside the hub: swarm mode has neither (yet).
COMPOSE_ONLY_PROTECTION = ("DOCKER_SOCKET_PROXY", "LAB_FIREWALL")


def _mode_defaults(values: dict[str, Any], env: Mapping[str, str]) -> None:
    """Swarm mode: host protection the settings do not ask for is off, as it really is.
    A directory's accounts: no admin by the default name, only those the settings name."""
    if values["AUTHENTICATOR"] != "native" and not (env.get("ADMIN_USERS") or "").strip():
        values["ADMIN_USERS"] = ()
    if values["MODE"] == "swarm":
        for name in COMPOSE_ONLY_PROTECTION:
            if not (env.get(name) or "").strip():
                values[name] = False


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


def _combination_problems(values: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """Settings that are fine alone but not together."""
    problems = []
    raw = {name: (env.get(name) or "").strip() for name in values}
    if bool(values["TLS_CERT"]) != bool(values["TLS_KEY"]):
        given, missing = ("TLS_CERT", "TLS_KEY") if values["TLS_CERT"] else ("TLS_KEY", "TLS_CERT")
        problems.append(f"{given}={raw[given]!r} in the settings but {missing} is empty: "
                        "set both (the certificate and its private key) for HTTPS, or "
                        "neither for plain HTTP.")
    redirect = values["HUB_HTTP_REDIRECT_PORT"]
    if redirect and not (values["TLS_CERT"] and values["TLS_KEY"]):
        problems.append(f"HUB_HTTP_REDIRECT_PORT={raw['HUB_HTTP_REDIRECT_PORT']!r} in the "
                        "settings needs HTTPS (it redirects plain HTTP there): set TLS_CERT "
                        "and TLS_KEY, or empty HUB_HTTP_REDIRECT_PORT.")
    elif redirect and redirect == values["HUB_PORT"]:
        problems.append(f"HUB_HTTP_REDIRECT_PORT={raw['HUB_HTTP_REDIRECT_PORT']!r} in the "
                        "settings is HUB_PORT too: choose another port for the redirect "
                        "(e.g. 80 when HUB_PORT is 443), or empty it.")
    if values["LAB_BLOCKED_NETWORKS"] and not values["LAB_FIREWALL"] and values["MODE"] != "swarm":
        problems.append(f"LAB_BLOCKED_NETWORKS={raw['LAB_BLOCKED_NETWORKS']!r} in the settings "
                        "needs LAB_FIREWALL=true (the lab-firewall service blocks them): set "
                        "LAB_FIREWALL=true, or empty LAB_BLOCKED_NETWORKS.")
    if _is_ip(values["HUB_DOMAIN"]) and not values["USERS_CAN_ACT_AS_EACH_OTHER"]:
        problems.append(f"HUB_DOMAIN={raw['HUB_DOMAIN']!r} is an IP address, which cannot "
                        "give each user's lab its own origin: give the server a DNS name "
                        "with a wildcard record (gpu.example.org and *.gpu.example.org) and "
                        "set HUB_DOMAIN to it (docs/explanation/origins.md), or accept "
                        "USERS_CAN_ACT_AS_EACH_OTHER=true.")
    public = values["HUB_PUBLIC_URL"]
    if public and urllib.parse.urlsplit(public).hostname != values["HUB_DOMAIN"].strip("[]"):
        problems.append(f"HUB_PUBLIC_URL={raw['HUB_PUBLIC_URL']!r} names another host than "
                        f"HUB_DOMAIN={raw['HUB_DOMAIN'] or 'localhost'!r}: set HUB_DOMAIN to "
                        "its host name (labs are served at <user>.HUB_DOMAIN).")
    shared = values["SHARED_DATA_DIR"] or ""
    if values["DOCKER_SOCKET_PROXY"] and any(not " " <= ch <= "~" or ch in '"\\' for ch in shared):
        problems.append(f"SHARED_DATA_DIR={raw['SHARED_DATA_DIR']!r} in the settings: with "
                        "DOCKER_SOCKET_PROXY=true the folder's path must be plain ASCII "
                        "without quotes or backslashes (the proxy checks every mount): "
                        "use such a path (a symlink will do), or DOCKER_SOCKET_PROXY=false.")
    problems += _work_quota_problems(values, raw)
    problems += _swarm_problems(values, raw)
    problems += _login_problems(values, raw)
    return problems


def _work_quota_problems(values: Mapping[str, Any], raw: Mapping[str, str]) -> list[str]:
    """WORK_QUOTA is kept by the broker (docker-proxy) on btrfs subvolumes of WORK_ROOT."""
    if values["WORK_QUOTA"] == "none":
        return [f"WORK_ROOT={raw['WORK_ROOT']!r} in the settings is used only with WORK_QUOTA: "
                "set WORK_QUOTA (e.g. 50G), or empty WORK_ROOT."] if values["WORK_ROOT"] else []
    quota = f"WORK_QUOTA={raw['WORK_QUOTA']!r} in the settings"
    if values["MODE"] == "swarm":
        return [f"{quota}: swarm mode keeps work folders on SWARM_HOMES (NFS), whose "
                "server sets quotas; set WORK_QUOTA=none, or use MODE=compose."]
    problems = []
    if not values["DOCKER_SOCKET_PROXY"]:
        problems.append(f"{quota} needs DOCKER_SOCKET_PROXY=true (docker-proxy makes each "
                        "work folder and keeps its quota).")
    root = values["WORK_ROOT"] or ""
    if not root:
        problems.append(f"{quota} needs WORK_ROOT, a folder on a btrfs filesystem with quotas "
                        "on, e.g. WORK_ROOT=/srv/gpuhub-work (docs/howto/work-quotas.md).")
    elif any(not " " < ch <= "~" or ch in '"\\,:=' for ch in root) or root.rstrip("/") != root:
        problems.append(f"WORK_ROOT={raw['WORK_ROOT']!r} in the settings: the path must be plain "
                        "ASCII without spaces, quotes, backslashes, commas, colons, = or a "
                        "trailing / (Docker's volume options carry it): use such a path.")
    return problems


LDAP_ONLY = ("LDAP_URL", "LDAP_CA_FILE", "LDAP_BIND_DN", "LDAP_BIND_PASSWORD_FILE",
             "LDAP_USER_BASE", "LDAP_USER_FILTER", "LDAP_GROUP_BASE")
OIDC_ONLY = ("OIDC_ISSUER", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET_FILE", "OIDC_CA_FILE")


def _login_problems(values: Mapping[str, Any], raw: Mapping[str, str]) -> list[str]:
    """What each AUTHENTICATOR needs, and settings of another one left behind."""
    mode = values["AUTHENTICATOR"]
    problems = []
    needs = {"native": (), "ldap": ("LDAP_URL", "LDAP_USER_BASE", "ALLOWED_GROUPS"),
             "oidc": ("OIDC_ISSUER", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET_FILE",
                      "ALLOWED_GROUPS")}[mode]
    examples = {"LDAP_URL": "ldaps://ldap.example.org", "LDAP_USER_BASE":
                "ou=people,dc=example,dc=org", "ALLOWED_GROUPS": "gpu-users (or * for everyone)",
                "OIDC_ISSUER": "https://login.example.org/realms/lab", "OIDC_CLIENT_ID": "gpuhub",
                "OIDC_CLIENT_SECRET_FILE": "/etc/gpuhub/oidc-client-secret"}
    for name in needs:
        if not values[name]:
            problems.append(f"AUTHENTICATOR={raw['AUTHENTICATOR']!r} in the settings needs "
                            f"{name}, e.g. {name}={examples[name]}.")
    unused = {"native": LDAP_ONLY + OIDC_ONLY + ("ALLOWED_GROUPS", "ADMIN_GROUPS"),
              "ldap": OIDC_ONLY, "oidc": LDAP_ONLY}[mode]
    for name in unused:
        if values[name]:
            problems.append(f"{name}={raw[name]!r} in the settings is not used with "
                            f"AUTHENTICATOR={raw['AUTHENTICATOR'] or 'native'!r}: remove it, "
                            "or set the AUTHENTICATOR it belongs to.")
    if mode == "ldap":
        if bool(values["LDAP_BIND_DN"]) != bool(values["LDAP_BIND_PASSWORD_FILE"]):
            given = "LDAP_BIND_DN" if values["LDAP_BIND_DN"] else "LDAP_BIND_PASSWORD_FILE"
            problems.append(f"{given}={raw[given]!r} in the settings: set LDAP_BIND_DN and "
                            "LDAP_BIND_PASSWORD_FILE together (the search account and the "
                            "file with its password), or neither for anonymous search.")
        grouped = (values["ALLOWED_GROUPS"] not in ((), ("*",)) or values["ADMIN_GROUPS"]
                   or any(key.startswith("@") for key in values["GPU_LIMITS"]))
        if grouped and not values["LDAP_GROUP_BASE"]:
            problems.append("ALLOWED_GROUPS, ADMIN_GROUPS or an @group in GPU_LIMITS need "
                            "LDAP_GROUP_BASE (where the groups are), e.g. "
                            "LDAP_GROUP_BASE=ou=groups,dc=example,dc=org.")
    return problems


def _swarm_problems(values: Mapping[str, Any], raw: Mapping[str, str]) -> list[str]:
    """What swarm mode needs, and the single-host features it cannot offer."""
    if values["MODE"] != "swarm":
        return []
    problems = []
    if not values["REGISTRY"]:
        problems.append("MODE='swarm' in the settings needs REGISTRY: every node pulls the "
                        "images from it (e.g. REGISTRY=registry.example.org:5000); "
                        "`invoke build --push` puts them there.")
    if not values["SWARM_HOMES"]:
        problems.append("MODE='swarm' in the settings needs SWARM_HOMES: a folder shared by "
                        "every node (an NFS mount at the same path), so a user's files "
                        "follow their lab to any node.")
    # Swarm itself hands out GPUs (generic resources): exclusive, no pins.
    if not one_lab_per_gpu(values["GPU_POLICY"]):
        problems.append(f"GPU_POLICY={raw['GPU_POLICY']!r} in the settings: swarm mode hands "
                        "each GPU to one lab at a time (Swarm generic resources); use "
                        "GPU_POLICY=exclusive or MODE=compose.")
    if values["GPU_PINS"]:
        problems.append(f"GPU_PINS={raw['GPU_PINS']!r} in the settings: Swarm chooses the GPU, "
                        "so pins are not possible in swarm mode; use a profile placement "
                        "constraint (node labels) instead, or empty GPU_PINS.")
    if values["TLS_CERT"]:
        problems.append(f"TLS_CERT={raw['TLS_CERT']!r} in the settings: HTTPS is not built in "
                        "for swarm mode yet; terminate TLS in front of HUB_PORT (and set "
                        "HUB_PUBLIC_URL), or use "
                        "MODE=compose.")
    if values["HUB_BIND_ADDRESS"] != "0.0.0.0":
        problems.append(f"HUB_BIND_ADDRESS={raw['HUB_BIND_ADDRESS']!r} in the settings: a Swarm "
                        "service publishes HUB_PORT on every address of the hub's node; "
                        "firewall the port instead, or use MODE=compose.")
    for name in COMPOSE_ONLY_PROTECTION:
        if values[name]:
            problems.append(f"{name}={raw[name]!r} in the settings: swarm mode has no "
                            "docker-proxy or lab-firewall yet (the hub holds the manager's "
                            f"Docker socket; see docs/explanation/security-model.md); set {name}=false "
                            "or remove the line, or use MODE=compose.")
    if values["LAB_DISK_LIMIT"] not in ("auto", "none"):
        problems.append(f"LAB_DISK_LIMIT={raw['LAB_DISK_LIMIT']!r} in the settings: a Swarm "
                        "service cannot bound a lab's writable layer; set LAB_DISK_LIMIT=auto "
                        "or none, or use MODE=compose.")
    if values["LAB_BLOCKED_NETWORKS"]:
        problems.append(f"LAB_BLOCKED_NETWORKS={raw['LAB_BLOCKED_NETWORKS']!r} in the settings: "
                        "swarm mode has no lab firewall yet; block these networks on every "
                        "node's own firewall, empty the setting, or use MODE=compose.")
    return problems


def read_env_file(path: Path) -> dict[str, str]:
    """Read a compose-style ``.env`` file: KEY=VALUE lines, # comments, optional quotes."""
    result: dict[str, str] = {}
    if not path.exists():
        return result
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SettingsError([f"{path}:{lineno}: expected KEY=VALUE, got {line!r}"])
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if key not in BY_NAME and key not in RENAMED and not key.startswith("GPUHUB_"):
            close = [n for n in BY_NAME if n.split("_")[0] == key.split("_")[0]]
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise SettingsError([
                f"{path}:{lineno}: unknown setting {key!r}.{hint} "
                "See .env.example for every setting."
            ])
        result[key] = value
    return result


def env_example() -> str:
    """The text of ``.env.example``: every setting, its default and meaning."""
    lines = [
        "# gpuhub settings. Copy to .env and change what you need; every line is optional.",
        "# `invoke up` validates this file before it touches Docker.",
    ]
    group = None
    for s in SETTINGS:
        if s.group != group:
            group = s.group
            lines += ["", f"## {group}"]
        lines += [f"# {s.help}", f"{s.name}={s.default}"]
    return "\n".join(lines) + "\n"
