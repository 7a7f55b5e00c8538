"""The lab firewall: host rules that keep labs away from the Docker host and chosen networks.

Runs as the ``lab-firewall`` compose service (host network, NET_ADMIN and NET_RAW only).
Traffic that enters the host from the labs network's bridge is matched by interface:

- to the host itself (INPUT chain): refused, whatever host address it is sent to,
  except replies to connections the host opened (Docker's userland proxy talks to the
  proxy container that way) and DNS (a resolver the host serves to its containers);
- forwarded beyond the host (Docker's DOCKER-USER chain): refused to 169.254.0.0/16
  (link-local: most clouds' metadata services), to the other clouds' metadata addresses
  (METADATA_ADDRESSES) and to LAB_BLOCKED_NETWORKS, except
  traffic that stays on the labs network (labs to the hub and proxy) and DNS (on some
  clouds the metadata server is also the resolver);
- on the labs network itself, when compose names the hub's and the proxy's addresses
  (``GPUHUB_LABS_PEERS``; the network then has inter-container traffic off, so Docker
  drops what these rules do not accept): only traffic from or to those two is accepted,
  so labs cannot reach each other. The bridge must hand bridged traffic to iptables
  (``bridge-nf-call-iptables``, which Docker turns on for such a network); while it does
  not, the service reports itself unhealthy and the hub starts no lab.

The rules live in two chains of their own, named after the bridge, with a jump from
INPUT and DOCKER-USER tagged ``gpuhub <project>``. They are checked every few seconds
and put back if something (a firewall reload, a Docker restart) removed them. They stay
in place when the service stops or dies, so labs that still run stay cut off: only a
deliberate ``invoke down`` (``labfirewall.py remove``, once no lab runs) removes them.

This file runs alone in the lab-firewall image (python3-minimal), so it imports only the
standard library, not even gpuhub/core/names.py: ``tests/unit/test_names.py`` checks that its
names (the status file) agree with that module, compose and the image. The bridge's name
comes from compose (``GPUHUB_LABS_BRIDGE``, ``gpuhub.core.names.bridge_name``).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

# Cloud metadata services hand out the machine's credentials. Most clouds use
# 169.254.169.254; these are the others: Alibaba Cloud, Azure's wire server (also its
# DNS resolver: DNS stays allowed), Oracle Cloud's legacy address.
METADATA_ADDRESSES = ("100.100.100.200/32", "168.63.129.16/32", "192.0.0.192/32")
ALWAYS_BLOCKED = ("169.254.0.0/16", *METADATA_ADDRESSES)
CHECK_INTERVAL = 5  # seconds between checks that the rules are still in place
STATUS_FILE = "/run/lab-firewall.ok"  # touched after each good check (the health check)
BRIDGE_FILTERING = "/proc/sys/net/bridge/bridge-nf-call-iptables"  # 1: bridged traffic seen
BACKENDS = ("iptables-nft", "iptables-legacy")
IFNAMSIZ = 15  # the longest Linux interface name
REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]

Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess]


class Ruleset(NamedTuple):
    """What the firewall installs for one project: chain name -> rules, and the jumps.

    (A NamedTuple: python3-minimal has no dataclasses.)
    """

    project: str
    bridge: str
    blocked: tuple[str, ...] = ()
    # The hub's and the proxy's addresses on the labs network: the only peers labs may
    # talk to there (empty: a network made before gpuhub kept labs apart).
    peers: tuple[str, ...] = ()

    @property
    def input_chain(self) -> str:
        return f"GPUHUB-IN-{self.bridge}"

    @property
    def forward_chain(self) -> str:
        return f"GPUHUB-FWD-{self.bridge}"

    def _comment(self, why: str) -> list[str]:
        return ["-m", "comment", "--comment", f"gpuhub {self.project}: {why}"]

    def chains(self) -> dict[str, list[list[str]]]:
        dns = [["-p", proto, "-m", proto, "--dport", "53", *self._comment("DNS"), "-j", "RETURN"]
               for proto in ("udp", "tcp")]
        host = [
            ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
             *self._comment("replies to the host"), "-j", "RETURN"],
            *dns,
            [*self._comment("labs may not reach the Docker host"), *REJECT],
        ]
        if self.peers:
            within = [
                *(["-o", self.bridge, direction, peer,
                   *self._comment("the hub and the proxy reach labs, labs reach them"),
                   "-j", "ACCEPT"]
                  for peer in self.peers for direction in ("-s", "-d")),
                ["-o", self.bridge, *self._comment("labs may not reach each other"), *REJECT],
            ]
        else:
            within = [["-o", self.bridge, *self._comment("within the labs network"),
                       "-j", "RETURN"]]
        beyond = [
            *within,
            *dns,
            *(["-d", net, *self._comment(f"labs may not reach {net}"), *REJECT]
              for net in (*ALWAYS_BLOCKED, *self.blocked)),
        ]
        return {self.input_chain: host, self.forward_chain: beyond}

    def jumps(self) -> list[tuple[str, list[str]]]:
        tag = ["-m", "comment", "--comment", f"gpuhub {self.project}"]
        return [("INPUT", ["-i", self.bridge, *tag, "-j", self.input_chain]),
                ("DOCKER-USER", ["-i", self.bridge, *tag, "-j", self.forward_chain])]


def ruleset_from_env(env: dict[str, str]) -> Ruleset:
    """The ruleset the compose service describes; raises ValueError naming the setting."""
    project = env.get("COMPOSE_PROJECT_NAME", "")
    if not project:
        raise ValueError("COMPOSE_PROJECT_NAME is empty; start the stack with `invoke up`")
    # docker-compose.yml always names it (gpuhub.core.names.bridge_name, or its fallback):
    # without it the rules would guard no interface, so refuse.
    bridge = env.get("GPUHUB_LABS_BRIDGE", "")
    if not bridge:
        raise ValueError("GPUHUB_LABS_BRIDGE is empty; start the stack with `invoke up`, "
                         "which names the labs network's bridge")
    if len(bridge) > IFNAMSIZ:
        raise ValueError(f"GPUHUB_LABS_BRIDGE={bridge!r} is longer than {IFNAMSIZ} characters; "
                         "start the stack with `invoke up`, which names the bridge")
    blocked = []
    for item in (part.strip() for part in env.get("LAB_BLOCKED_NETWORKS", "").split(",")):
        if item:
            try:
                blocked.append(str(ipaddress.IPv4Network(item)))
            except ValueError:
                raise ValueError(f"LAB_BLOCKED_NETWORKS: {item!r} is not an IPv4 network such "
                                 "as 10.0.0.0/8; fix it in the settings") from None
    peers = []
    for item in (part.strip() for part in env.get("GPUHUB_LABS_PEERS", "").split(",")):
        if item:
            try:
                peers.append(str(ipaddress.IPv4Address(item)))
            except ValueError:
                raise ValueError(f"GPUHUB_LABS_PEERS: {item!r} is not an IPv4 address; start "
                                 "the stack with `invoke up`, which names them") from None
    return Ruleset(project=project, bridge=bridge, blocked=tuple(blocked), peers=tuple(peers))


def _run(args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True)


def choose_backend(run: Runner = _run) -> str:
    """The iptables variant Docker uses here: the one whose filter table holds its rules.

    Hosts may have both (a legacy table left over, or loaded by a module); Docker's rules
    are in exactly one, as kube-proxy's iptables-wrapper also reasons.
    """
    counts = {}
    for backend in BACKENDS:
        out = run([backend, "-w", "-S"], None)
        if out.returncode == 0 and "-N DOCKER-USER" in out.stdout:
            counts[backend] = out.stdout.count("DOCKER")
    if not counts:
        raise RuntimeError("Docker's DOCKER-USER chain is in neither iptables-nft nor "
                           "iptables-legacy: Docker does not manage iptables on this host "
                           "(dockerd --iptables=false, rootless Docker, Docker Desktop); "
                           "protect the host another way and set LAB_FIREWALL=false")
    return max(counts, key=lambda b: (counts[b], b == "iptables-nft"))


class Firewall:
    """Install, check and remove one project's rules with one iptables backend."""

    def __init__(self, rules: Ruleset, backend: str, run: Runner = _run):
        self.rules, self.backend, self._run = rules, backend, run

    def iptables(self, *args: str) -> subprocess.CompletedProcess:
        return self._run([self.backend, "-w", *args], None)

    def restore_input(self, jumps: list[tuple[str, list[str]]]) -> str:
        """One atomic iptables-restore --noflush transaction: our chains, whole, and jumps."""
        lines = ["*filter"]
        chains = self.rules.chains()
        lines += [f":{chain} - [0:0]" for chain in chains]  # creates, or empties, the chain
        for chain, rules in chains.items():
            lines += [" ".join(["-A", chain, *map(_quote, rule)]) for rule in rules]
        lines += [" ".join(["-I", builtin, "1", *map(_quote, rule)]) for builtin, rule in jumps]
        return "\n".join([*lines, "COMMIT", ""])

    def missing(self) -> list[str]:
        """What is not in place (empty when every rule is); never changes anything."""
        problems = []
        for chain, rules in self.rules.chains().items():
            listed = self.iptables("-S", chain)
            if listed.returncode != 0:
                problems.append(f"chain {chain} is missing")
                continue
            present = [ln for ln in listed.stdout.splitlines() if ln.startswith("-A ")]
            if len(present) != len(rules) or not all(
                    self.iptables("-C", chain, *rule).returncode == 0 for rule in rules):
                problems.append(f"chain {chain} does not hold exactly gpuhub's rules")
        for builtin, rule in self.rules.jumps():
            if self.iptables("-C", builtin, *rule).returncode != 0:
                problems.append(f"the jump from {builtin} to {rule[-1]} is missing")
        return problems

    def check(self) -> list[str]:
        """``missing()``, at the cost of one iptables call while nothing changed.

        ``missing()`` asks iptables once per rule (a process each, 15 every few seconds):
        most of this service's CPU. So the filter table's lines that name gpuhub's chains
        (the chains, their rules, the jumps to them), as ``iptables -S`` prints them, are
        kept from a check that found everything in place, and as long as a listing shows
        exactly those lines again, nothing of ours changed. Any difference, or a listing
        that fails, makes the full check. The lines are kept only if the table did not
        change while the full check ran (the same listing before and after it).
        """
        before = self._our_lines()
        if before is not None and before == self._checked_lines:
            return []
        problems = self.missing()
        self._checked_lines = None
        if not problems and before is not None and self._our_lines() == before:
            self._checked_lines = before
        return problems

    _checked_lines: list[str] | None = None

    def _our_lines(self) -> list[str] | None:
        """The filter table's lines that name one of gpuhub's chains, in order; None if
        iptables could not list it."""
        listed = self.iptables("-S")
        if listed.returncode != 0:
            return None
        ours = set(self.rules.chains())
        return [line for line in listed.stdout.splitlines()
                if ours.intersection(line.split())]

    def apply(self) -> None:
        self._checked_lines = None
        jumps = [(b, r) for b, r in self.rules.jumps()
                 if self.iptables("-C", b, *r).returncode != 0]
        restore = self.backend + "-restore"
        out = self._run([restore, "-w", "--noflush"], self.restore_input(jumps))
        if out.returncode != 0:
            raise RuntimeError(f"{restore} failed: {out.stderr.strip()}")

    def remove(self) -> None:
        for builtin, rule in self.rules.jumps():
            while self.iptables("-C", builtin, *rule).returncode == 0:
                self.iptables("-D", builtin, *rule)
        for chain in self.rules.chains():
            self.iptables("-F", chain)
            self.iptables("-X", chain)


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop()


def log(message: str) -> None:
    print(f"lab-firewall: {message}", flush=True)


def bridge_exists(bridge: str) -> bool:
    return os.path.exists(f"/sys/class/net/{bridge}")


def bridge_filtering_on(path: str = BRIDGE_FILTERING) -> bool:
    """Whether bridged traffic passes iptables (without it, labs-to-labs rules see nothing)."""
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def mark_healthy(status: str, healthy: bool) -> None:
    """Touch ``status`` (the health check looks at its age), or remove it."""
    if healthy:
        with open(status, "w") as f:
            f.write(f"{time.time():.0f}\n")
    elif os.path.exists(status):
        os.remove(status)


def run_forever(fw: Firewall, interval: float = CHECK_INTERVAL,
                status: str = STATUS_FILE, filtering: Callable[[], bool] = bridge_filtering_on
                ) -> None:
    """Apply the rules and keep them in place until SIGTERM or SIGINT, which leave them.

    Leaving them is what fails closed: a lab-firewall that was stopped, or died, must
    not open the host to labs that still run. `invoke down` removes them.

    After every check that finds the rules in place (and the bridge there), ``status`` is
    touched: the container's health check only looks at its age, so a busy host cannot
    make it fail, and the hub, which starts labs only while it is healthy, keeps working.
    """
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    rules = fw.rules
    warned = False
    try:
        fw.apply()
        blocked = ", ".join((*ALWAYS_BLOCKED, *rules.blocked))
        apart = (f", nor each other (only {' and '.join(rules.peers)})" if rules.peers
                 else "; they reach each other (a labs network made before gpuhub kept "
                      "them apart: `invoke down`, then `invoke up`)")
        log(f"project {rules.project}: labs on {rules.bridge} may not reach this host, "
            f"nor {blocked}{apart} ({fw.backend})")
        filtered_before = True
        while True:
            present = bridge_exists(rules.bridge)
            if not present and not warned:
                log(f"error: there is no interface {rules.bridge}: the labs network was made "
                    "without that name; run `invoke down` and `invoke up`")
            warned = warned or not present
            filtered = not rules.peers or filtering()
            if not filtered and filtered_before:
                log(f"error: bridged traffic bypasses iptables ({BRIDGE_FILTERING} is not 1), "
                    "so labs could reach each other: `modprobe br_netfilter` and "
                    f"`sysctl -w {BRIDGE_FILTERING[10:].replace('/', '.')}=1`; no lab starts "
                    "until then")
            filtered_before = filtered
            mark_healthy(status, present and filtered)
            time.sleep(interval)
            problems = fw.check()
            if problems:
                mark_healthy(status, False)
                log("putting the rules back: " + "; ".join(problems))
                fw.apply()
    except _Stop:
        log(f"project {rules.project}: stopping; the rules stay in place until `invoke down`")
    finally:
        mark_healthy(status, False)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """``run`` (the service), ``check`` (what is missing, for admins) or ``remove``."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "run"
    try:
        rules = ruleset_from_env(dict(os.environ))
        fw = Firewall(rules, choose_backend())
    except (ValueError, RuntimeError) as err:
        log(f"error: {err}")
        return 2
    if command == "check":
        problems = fw.missing()
        if not bridge_exists(rules.bridge):
            problems.append(f"no interface {rules.bridge}")
        if rules.peers and not bridge_filtering_on():
            problems.append(f"bridged traffic bypasses iptables ({BRIDGE_FILTERING} is not 1)")
        for problem in problems:
            log(problem)
        return 1 if problems else 0
    if command == "remove":
        fw.remove()
        return 0
    if command != "run":
        log(f"error: unknown command {command!r}; use run, check or remove")
        return 2
    try:
        run_forever(fw)
    except RuntimeError as err:
        log(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
