"""Labs apart (compose mode, LAB_FIREWALL=true): the labs network's subnet and the hub's
and the proxy's fixed addresses, which lab-firewall lets labs talk to and nothing else.

`invoke up` adds docker-compose.labs-apart.yml with these variables for a labs network it
makes now (its subnet picked by Docker's own allocator, so it respects the engine's
``default-address-pools`` and every network already there), or one made so before (its
subnet read back). A network made by an older gpuhub, or by hand, cannot be changed in
place (Docker fixes a network's subnet and inter-container setting when it makes it):
it keeps working as before, labs reaching each other, and `invoke up` says so and how to
end it (`invoke down`, then `invoke up`).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass

from gpuhub.core import names
from gpuhub.tasks.deployment import fail, stderr_tail

APART_FILE = "docker-compose.labs-apart.yml"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
PROBE_LABEL = "gpuhub.labs-subnet-probe"


@dataclass(frozen=True)
class LabsAddresses:
    """A labs subnet: the hub at its second address, the proxy at its third, and labs in
    its upper half (Docker gives labs addresses there only)."""

    subnet: ipaddress.IPv4Network

    @classmethod
    def of(cls, subnet: str) -> LabsAddresses:
        network = ipaddress.IPv4Network(subnet)
        if network.prefixlen > 26:
            raise ValueError(f"the labs subnet {subnet} is too small (at most /26)")
        return cls(network)

    @property
    def hub(self) -> str:
        return str(self.subnet.network_address + 2)

    @property
    def proxy(self) -> str:
        return str(self.subnet.network_address + 3)

    @property
    def lab_range(self) -> str:
        return str(list(self.subnet.subnets(prefixlen_diff=1))[1])

    def env(self) -> dict[str, str]:
        """The variables docker-compose.labs-apart.yml reads."""
        return {"GPUHUB_LABS_SUBNET": str(self.subnet), "GPUHUB_LABS_RANGE": self.lab_range,
                "GPUHUB_HUB_ADDRESS": self.hub, "GPUHUB_PROXY_ADDRESS": self.proxy}


def inspect_network(c, network: str) -> dict | None:
    """What Docker knows of ``network``; None when it does not exist."""
    found = c.run(f"docker network inspect {shlex.quote(network)}", hide=True, warn=True)
    if found.failed:
        said = (found.stderr or "").lower()
        if "no such network" in said or "not found" in said:
            return None
        raise fail(f"could not inspect the labs network {network}: {stderr_tail(found)}")
    try:
        (info,) = json.loads(found.stdout)
    except ValueError:
        raise fail(f"`docker network inspect {network}` printed no network; is Docker "
                   "well?") from None
    return info


def subnet_of(info: dict) -> str | None:
    configs = (info.get("IPAM") or {}).get("Config") or []
    return next((cfg["Subnet"] for cfg in configs if "." in (cfg.get("Subnet") or "")), None)


def made_apart(info: dict) -> bool:
    """A labs network made with labs apart: inter-container traffic off, its own subnet."""
    return (info.get("Options") or {}).get(ICC_OPTION) == "false" and bool(subnet_of(info))


def free_subnet(c, project) -> str:
    """A subnet Docker's allocator picks now: make a probe network, read it, remove it."""
    probe = f"{project.name}-labs-probe"
    c.run(f"docker network rm {shlex.quote(probe)}", hide=True, warn=True)  # a leftover
    made = c.run(f"docker network create --label {PROBE_LABEL}=1 {shlex.quote(probe)}",
                 hide=True, warn=True)
    if made.failed:
        raise fail(f"Docker has no free subnet for the labs network ({stderr_tail(made)}); "
                   "remove unused networks (`docker network prune`) or widen the engine's "
                   "default-address-pools")
    try:
        info = inspect_network(c, probe)
        subnet = subnet_of(info or {})
    finally:
        c.run(f"docker network rm {shlex.quote(probe)}", hide=True, warn=True)
    if not subnet:
        raise fail(f"Docker gave the probe network {probe} no IPv4 subnet; is Docker well?")
    return subnet


def plan(c, project) -> LabsAddresses | None:
    """The addresses for labs apart; None for a labs network made before (labs reach each
    other there until it is made anew)."""
    info = inspect_network(c, names.labs_network(project.name))
    if info is None:
        return LabsAddresses.of(free_subnet(c, project))
    if made_apart(info):
        return LabsAddresses.of(subnet_of(info) or "")
    return None


NOT_APART_WARNING = (
    "warning: labs can reach each other: the labs network {network} was made by an older "
    "gpuhub (or by hand), and Docker cannot change it in place; run `invoke down`, then "
    "`invoke up` to make it anew (users, passwords and work folders are kept)")
