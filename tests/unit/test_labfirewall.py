"""The lab firewall's rules, names and upkeep, against a fake iptables (no root needed)."""

import shlex
import subprocess

import pytest

from gpuhub.core.names import bridge_name
from gpuhub.labfirewall import service as labfirewall
from gpuhub.labfirewall.service import REJECT, Firewall, Ruleset, choose_backend, ruleset_from_env


class FakeIptables:
    """The filter table as iptables -S/-C/-D/-F/-X and iptables-restore --noflush see it."""

    def __init__(self):
        self.chains: dict[str, list[tuple[str, ...]]] = {"INPUT": [], "DOCKER-USER": []}
        self.calls: list[list[str]] = []

    def __call__(self, args, stdin=None):
        self.calls.append(list(args))
        args = [a for a in args[1:] if a != "-w"]
        if args[:1] == ["--noflush"]:
            self.restore(stdin)
            return self.result(0)
        if args == ["-S"]:  # the whole table
            return self.result(0, "".join(self.listing(chain) for chain in self.chains))
        op, chain, rule = args[0], args[1], tuple(args[2:])
        if chain not in self.chains:
            return self.result(1, stderr=f"No chain/target/match by that name: {chain}")
        rules = self.chains[chain]
        if op == "-S":
            return self.result(0, self.listing(chain))
        if op == "-C":
            return self.result(0 if rule in rules else 1)
        if op == "-D":
            rules.remove(rule)
        elif op == "-F":
            rules.clear()
        elif op == "-X":
            del self.chains[chain]
        return self.result(0)

    def listing(self, chain):
        return "\n".join([f"-N {chain}"] + [
            shlex.join(["-A", chain, *r]) for r in self.chains[chain]]) + "\n"

    def restore(self, text):
        for line in text.splitlines():
            if line.startswith(":"):
                self.chains[line[1:].split()[0]] = []
            elif line.startswith("-A "):
                _, chain, *rule = shlex.split(line)
                self.chains[chain].append(tuple(rule))
            elif line.startswith("-I "):
                _, chain, position, *rule = shlex.split(line)
                self.chains[chain].insert(int(position) - 1, tuple(rule))

    @staticmethod
    def result(code, stdout="", stderr=""):
        return subprocess.CompletedProcess([], code, stdout, stderr)


RULES = Ruleset(project="gpuhub", bridge="gpuhub-labs", blocked=("10.0.0.0/8",))


@pytest.fixture
def iptables():
    return FakeIptables()


def test_the_bridge_is_named_after_the_network_when_that_fits():
    # docker-compose.yml falls back to "<project>-labs": the two must agree.
    assert bridge_name("gpuhub") == "gpuhub-labs"
    assert bridge_name("lab-a") == "lab-a-labs"


def test_long_project_names_get_a_short_stable_distinct_bridge():
    names = {bridge_name(f"gpuhubtest-{i:06x}") for i in range(200)}
    assert len(names) == 200
    assert all(len(n) <= 15 and n.startswith("gpuhub-") for n in names)
    assert bridge_name("gpuhubtest-abcdef") == bridge_name("gpuhubtest-abcdef")


def test_the_host_is_refused_but_replies_and_dns_are_not():
    replies, udp, tcp, refuse = RULES.chains()["GPUHUB-IN-gpuhub-labs"]
    assert replies[:4] == ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
    assert [(r[1], r[5], r[-1]) for r in (udp, tcp)] == [("udp", "53", "RETURN"),
                                                        ("tcp", "53", "RETURN")]
    assert replies[-1] == "RETURN" and "-i" not in refuse and "-d" not in refuse
    assert refuse[-4:] == ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]


def test_metadata_and_blocked_networks_are_refused_beyond_the_labs_network():
    beyond = RULES.chains()["GPUHUB-FWD-gpuhub-labs"]
    assert beyond[0][:2] == ["-o", "gpuhub-labs"] and beyond[0][-1] == "RETURN"
    refused = [r[1] for r in beyond if "REJECT" in r]
    # Every cloud's metadata service: link-local, Alibaba, Azure, Oracle (legacy).
    assert refused == ["169.254.0.0/16", "100.100.100.200/32", "168.63.129.16/32",
                       "192.0.0.192/32", "10.0.0.0/8"]
    # DNS (Azure's resolver is its metadata address) is allowed before any refusal.
    assert [r[1] for r in beyond[1:3]] == ["udp", "tcp"] and beyond[1][5] == "53"


def test_jumps_come_from_the_bridge_and_carry_the_project():
    assert RULES.jumps() == [
        ("INPUT", ["-i", "gpuhub-labs", "-m", "comment", "--comment", "gpuhub gpuhub",
                   "-j", "GPUHUB-IN-gpuhub-labs"]),
        ("DOCKER-USER", ["-i", "gpuhub-labs", "-m", "comment", "--comment", "gpuhub gpuhub",
                         "-j", "GPUHUB-FWD-gpuhub-labs"])]
    assert all(len(chain) <= 28 for chain in Ruleset("p", "x" * 15).chains())


def test_the_ruleset_comes_from_the_compose_environment():
    rules = ruleset_from_env({"COMPOSE_PROJECT_NAME": "gpuhubtest-abcdef",
                              "GPUHUB_LABS_BRIDGE": bridge_name("gpuhubtest-abcdef"),
                              "LAB_BLOCKED_NETWORKS": "10.0.0.0/8, 203.0.113.7"})
    assert rules == Ruleset("gpuhubtest-abcdef", bridge_name("gpuhubtest-abcdef"),
                            ("10.0.0.0/8", "203.0.113.7/32"))
    given = ruleset_from_env({"COMPOSE_PROJECT_NAME": "p", "GPUHUB_LABS_BRIDGE": "br-x"})
    assert given.bridge == "br-x"


@pytest.mark.parametrize("env, words", [
    ({}, "COMPOSE_PROJECT_NAME is empty"),
    ({"COMPOSE_PROJECT_NAME": "p"}, "GPUHUB_LABS_BRIDGE is empty"),
    ({"COMPOSE_PROJECT_NAME": "p", "GPUHUB_LABS_BRIDGE": "x" * 16}, "longer than 15"),
    ({"COMPOSE_PROJECT_NAME": "p", "GPUHUB_LABS_BRIDGE": "p-labs",
      "LAB_BLOCKED_NETWORKS": "10.0.0.1/8"}, "'10.0.0.1/8'"),
])
def test_a_bad_environment_names_the_setting(env, words):
    with pytest.raises(ValueError, match=words):
        ruleset_from_env(env)


def listing(**tables):
    def run(args, stdin=None):
        out = tables.get(args[0])
        return FakeIptables.result(1 if out is None else 0, out or "")
    return run


DOCKER_NFT = "-P INPUT ACCEPT\n-N DOCKER\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n"


def test_the_backend_is_the_one_holding_dockers_rules():
    assert choose_backend(listing(**{"iptables-nft": DOCKER_NFT,
                                     "iptables-legacy": "-P INPUT ACCEPT\n"})) == "iptables-nft"
    assert choose_backend(listing(**{"iptables-nft": "-P INPUT ACCEPT\n",
                                     "iptables-legacy": DOCKER_NFT})) == "iptables-legacy"
    stale = "-N DOCKER-USER\n"
    assert choose_backend(listing(**{"iptables-nft": stale,
                                     "iptables-legacy": DOCKER_NFT})) == "iptables-legacy"


def test_without_dockers_chains_the_firewall_says_why_and_how_out():
    with pytest.raises(RuntimeError, match="LAB_FIREWALL=false"):
        choose_backend(listing(**{"iptables-nft": "-P INPUT ACCEPT\n"}))


def test_apply_installs_everything_in_one_transaction_and_is_idempotent(iptables):
    fw = Firewall(RULES, "iptables-nft", iptables)
    assert len(fw.missing()) == 4
    fw.apply()
    assert fw.missing() == []
    restores = [c for c in iptables.calls if c[0] == "iptables-nft-restore"]
    assert restores == [["iptables-nft-restore", "-w", "--noflush"]]
    fw.apply()
    assert iptables.chains["INPUT"] == [tuple(RULES.jumps()[0][1])], "one jump, not two"
    assert fw.missing() == []


def test_missing_or_extra_rules_are_noticed_and_put_back(iptables):
    fw = Firewall(RULES, "iptables-nft", iptables)
    fw.apply()
    iptables.chains["DOCKER-USER"].clear()
    iptables.chains["GPUHUB-IN-gpuhub-labs"].insert(0, ("-j", "ACCEPT"))
    assert fw.missing() == ["chain GPUHUB-IN-gpuhub-labs does not hold exactly gpuhub's rules",
                            "the jump from DOCKER-USER to GPUHUB-FWD-gpuhub-labs is missing"]
    fw.apply()
    assert fw.missing() == []
    assert ("-j", "ACCEPT") not in iptables.chains["GPUHUB-IN-gpuhub-labs"]


def test_while_nothing_changed_a_check_is_one_listing(iptables):
    fw = Firewall(RULES, "iptables-nft", iptables)
    fw.apply()
    assert fw.check() == []  # the full check, once
    iptables.calls.clear()
    for _ in range(3):
        assert fw.check() == []
    assert iptables.calls == [["iptables-nft", "-w", "-S"]] * 3


@pytest.mark.parametrize("change", ["a rule gone", "a rule added", "a jump gone", "a chain gone",
                                    "a rule replaced"])
def test_any_change_to_gpuhubs_lines_makes_the_full_check(iptables, change):
    fw = Firewall(RULES, "iptables-nft", iptables)
    fw.apply()
    assert fw.check() == [] and fw.check() == []
    inbound = iptables.chains["GPUHUB-IN-gpuhub-labs"]
    if change == "a rule gone":
        inbound.pop()
    elif change == "a rule added":
        inbound.append(("-j", "ACCEPT"))
    elif change == "a jump gone":
        iptables.chains["DOCKER-USER"].clear()
    elif change == "a chain gone":
        del iptables.chains["GPUHUB-FWD-gpuhub-labs"]
        iptables.chains["DOCKER-USER"].clear()
    else:
        inbound[0] = ("-j", "ACCEPT")
    assert fw.check() != []
    fw.apply()
    assert fw.check() == [] and fw.missing() == []


def test_a_listing_that_fails_makes_the_full_check(iptables):
    fw = Firewall(RULES, "iptables-nft", iptables)
    fw.apply()
    fw.check()

    def failing_listing(args, stdin=None):
        if [a for a in args if a != "-w"][1:] == ["-S"]:
            return FakeIptables.result(1, stderr="iptables: lock")
        return iptables(args, stdin)

    fw._run = failing_listing
    iptables.calls.clear()
    assert fw.check() == []
    assert any("-C" in call for call in iptables.calls), "the full check ran"
    iptables.chains["INPUT"].clear()
    assert fw.check() == ["the jump from INPUT to GPUHUB-IN-gpuhub-labs is missing"]


def test_lines_that_changed_during_the_full_check_are_not_kept(iptables):
    fw = Firewall(RULES, "iptables-nft", iptables)
    fw.apply()
    listings = 0

    def removing_after_the_first_listing(args, stdin=None):
        nonlocal listings
        if [a for a in args if a != "-w"][1:] == ["-S"]:
            listings += 1
            if listings == 2:  # while the full check runs, something removes a jump
                iptables.chains["INPUT"].clear()
        return iptables(args, stdin)

    fw._run = removing_after_the_first_listing
    fw.check()
    assert fw.check() == ["the jump from INPUT to GPUHUB-IN-gpuhub-labs is missing"]


def test_remove_leaves_nothing_of_the_project(iptables):
    other = Firewall(Ruleset("other", "other-labs"), "iptables-nft", iptables)
    other.apply()
    fw = Firewall(RULES, "iptables-nft", iptables)
    fw.apply()
    fw.apply()
    fw.remove()
    assert set(iptables.chains) == {"INPUT", "DOCKER-USER", "GPUHUB-IN-other-labs",
                                    "GPUHUB-FWD-other-labs"}
    assert all("gpuhub gpuhub" not in " ".join(r) for rules in iptables.chains.values()
               for r in rules)
    assert other.missing() == []


def test_the_service_keeps_the_rules_also_when_stopped(monkeypatch, tmp_path):
    import signal

    status = tmp_path / "lab-firewall.ok"
    events = []

    class Watched:
        rules, backend = RULES, "iptables-nft"

        def apply(self):
            events.append("apply")

        def check(self):
            events.append(f"check ({'healthy' if status.exists() else 'not healthy'})")
            if len(events) == 2:
                return ["the jump from INPUT to GPUHUB-IN-gpuhub-labs is missing"]
            raise labfirewall._Stop()  # as SIGTERM does

        def remove(self):
            events.append("remove")

    monkeypatch.setattr(labfirewall, "bridge_exists", lambda name: True)
    before = signal.getsignal(signal.SIGTERM)
    labfirewall.run_forever(Watched(), interval=0, status=str(status))
    # Stopped (SIGTERM): labs that still run stay cut off until `invoke down` removes them.
    assert events == ["apply", "check (healthy)", "apply", "check (healthy)"]
    assert not status.exists(), "stopped: no longer healthy"
    assert signal.getsignal(signal.SIGTERM) is before


def test_without_its_bridge_the_service_is_not_healthy(monkeypatch, tmp_path):
    status = tmp_path / "lab-firewall.ok"

    class Quiet:
        rules, backend = RULES, "iptables-nft"

        def apply(self):
            pass

        def check(self):
            assert not status.exists()
            raise labfirewall._Stop()

        def remove(self):
            pass

    monkeypatch.setattr(labfirewall, "bridge_exists", lambda name: False)
    labfirewall.run_forever(Quiet(), interval=0, status=str(status))


APART = Ruleset("gpuhub", "gpuhub-labs", peers=("172.30.0.2", "172.30.0.3"))


def test_with_peers_labs_reach_only_the_hub_and_the_proxy_on_their_network():
    within = [r for r in APART.chains()["GPUHUB-FWD-gpuhub-labs"] if r[:2] == ["-o", "gpuhub-labs"]]
    accepted = [(r[2], r[3]) for r in within if r[-1] == "ACCEPT"]
    assert accepted == [("-s", "172.30.0.2"), ("-d", "172.30.0.2"),
                        ("-s", "172.30.0.3"), ("-d", "172.30.0.3")]
    # Then everything else on the bridge is refused (Docker's own rule would drop it too:
    # the network has inter-container traffic off), before any other rule of the chain.
    assert within[-1][-4:] == REJECT and "gpuhub gpuhub: labs may not reach each other" in within[-1]
    assert APART.chains()["GPUHUB-FWD-gpuhub-labs"][:len(within)] == within
    # Without peers (a network made before): traffic on the bridge is left alone, as before.
    assert RULES.chains()["GPUHUB-FWD-gpuhub-labs"][0][-1] == "RETURN"


def test_the_peers_come_from_compose_and_must_be_addresses():
    env = {"COMPOSE_PROJECT_NAME": "gpuhub", "GPUHUB_LABS_BRIDGE": "gpuhub-labs",
           "GPUHUB_LABS_PEERS": "172.30.0.2, 172.30.0.3"}
    assert ruleset_from_env(env) == APART
    for bad in ("172.30.0.2,hub", "172.30.0.0/16", "172.30.0.2,"):
        if bad.endswith(","):
            assert ruleset_from_env({**env, "GPUHUB_LABS_PEERS": bad}).peers == ("172.30.0.2",)
            continue
        with pytest.raises(ValueError, match="GPUHUB_LABS_PEERS.*not an IPv4 address"):
            ruleset_from_env({**env, "GPUHUB_LABS_PEERS": bad})


@pytest.mark.parametrize("filtering, healthy", [(True, True), (False, False)])
def test_labs_apart_is_healthy_only_while_bridged_traffic_passes_iptables(
        monkeypatch, tmp_path, capsys, filtering, healthy):
    status = tmp_path / "lab-firewall.ok"
    seen = []

    class Apart:
        rules, backend = APART, "iptables-nft"

        def apply(self):
            pass

        def check(self):
            seen.append(status.exists())
            raise labfirewall._Stop()

    monkeypatch.setattr(labfirewall, "bridge_exists", lambda name: True)
    labfirewall.run_forever(Apart(), interval=0, status=str(status), filtering=lambda: filtering)
    assert seen == [healthy]
    assert ("bridged traffic bypasses iptables" in capsys.readouterr().out) is not healthy


def test_bridge_filtering_is_read_from_the_kernel(tmp_path):
    flag = tmp_path / "bridge-nf-call-iptables"
    assert not labfirewall.bridge_filtering_on(str(flag))  # no br_netfilter: off
    flag.write_text("0\n")
    assert not labfirewall.bridge_filtering_on(str(flag))
    flag.write_text("1\n")
    assert labfirewall.bridge_filtering_on(str(flag))
