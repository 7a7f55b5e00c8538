"""GpuAllocator: each policy, limits, pins and refusals; then a model of the running hub.

The state machine at the end plays the real system: Docker labels are the record of
who holds which GPU, spawns in flight are the spawner's class-level ``_grants``,
and a hub restart builds a new allocator that knows only what Docker says. Here each
step is atomic; test_gpu_grant_race.py interleaves the awaits of real spawns.
"""

import collections

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gpuhub.core.allocator import POLICIES, GpuAllocator, NoGpuAvailable, parse_assignments

FOUR = ["0", "1", "2", "3"]


def refusal(allocator, user, count, held=None, groups=()):
    with pytest.raises(NoGpuAvailable) as info:
        allocator.allocate(user, count, held or {}, groups)
    return info.value


# --- exclusive ---------------------------------------------------------------------------

def test_exclusive_gives_free_gpus_in_inventory_order():
    alloc = GpuAllocator(FOUR)
    assert alloc.allocate("alice", 2, {}) == ["0", "1"]
    assert alloc.allocate("bob", 1, {"alice": ["0", "1"]}) == ["2"]
    assert alloc.allocate("carol", 1, {"alice": ["0", "1"], "bob": ["2"]}) == ["3"]


def test_exclusive_skips_a_gpu_held_by_someone_else():
    alloc = GpuAllocator(FOUR)
    assert alloc.allocate("alice", 2, {"bob": ["1"], "carol": ["0"]}) == ["2", "3"]


def test_exclusive_ignores_what_the_user_themself_holds():
    # `held` is about *other* labs: a stale entry for the same user must not block them.
    alloc = GpuAllocator(["0"])
    assert alloc.allocate("alice", 1, {"alice": ["0"]}) == ["0"]


def test_exclusive_refusal_says_how_many_and_the_way_out():
    alloc = GpuAllocator(["0", "1"])
    err = refusal(alloc, "alice", 1, {"bob": ["0"], "carol": ["1"]})
    assert str(err) == ("all 2 GPUs you may use are in use (0 free, this profile needs 1); "
                        "choose the CPU profile or try later")
    assert err.detail == "held by 0: bob, 1: carol"


def test_exclusive_refusal_with_some_free_does_not_say_all_are_in_use():
    alloc = GpuAllocator(["0", "1", "2"])
    err = refusal(alloc, "alice", 2, {"bob": ["0", "2"]})
    assert str(err).startswith("2 of the 3 GPUs you may use are in use (1 free, "
                               "this profile needs 2)"), str(err)
    assert "choose the CPU profile or try later" in str(err)
    assert err.detail == "held by 0: bob, 2: bob"


def test_exclusive_refusal_detail_leaves_out_gpus_the_user_could_not_have_had():
    alloc = GpuAllocator(["0", "1"], pins={"carol": ["1"]})
    err = refusal(alloc, "alice", 1, {"bob": ["0"], "carol": ["1"]})
    assert "all 1 GPUs you may use are in use" in str(err)
    assert err.detail == "held by 0: bob"


# --- shared ------------------------------------------------------------------------------

def test_shared_gives_every_gpu_lab_every_gpu_even_when_held():
    alloc = GpuAllocator(FOUR, policy="shared")
    assert alloc.allocate("alice", 1, {}) == FOUR
    assert alloc.allocate("bob", 2, {"alice": FOUR}) == FOUR


def test_shared_keeps_pinned_gpus_out_of_other_labs():
    alloc = GpuAllocator(FOUR, policy="shared", pins={"alice": ["3"]})
    assert alloc.allocate("bob", 1, {}) == ["0", "1", "2"]
    assert alloc.allocate("alice", 1, {"bob": ["0", "1", "2"]}) == ["3"]


def test_shared_refuses_more_gpus_than_the_user_may_use():
    alloc = GpuAllocator(["0", "1"], policy="shared", pins={"alice": ["1"]})
    err = refusal(alloc, "bob", 2)
    assert "at most 1 GPU(s)" in str(err) and "asks for 2" in str(err)


# --- round-robin -------------------------------------------------------------------------

def test_round_robin_spreads_one_gpu_labs_over_all_gpus():
    alloc = GpuAllocator(FOUR, policy="round-robin")
    held: dict[str, list[str]] = {}
    for i in range(6):
        held[f"u{i}"] = alloc.allocate(f"u{i}", 1, held)
    load = collections.Counter(d for ds in held.values() for d in ds)
    assert set(load) == set(FOUR) and max(load.values()) - min(load.values()) <= 1, load


def test_round_robin_takes_the_least_loaded_gpus():
    alloc = GpuAllocator(FOUR, policy="round-robin")
    held = {"a": ["0", "1"], "b": ["0"], "c": ["2", "1"]}
    assert alloc.allocate("d", 1, held) == ["3"]
    assert alloc.allocate("d", 2, held) == ["2", "3"]


def test_round_robin_shares_when_every_gpu_is_busy():
    alloc = GpuAllocator(["0", "1"], policy="round-robin")
    assert len(alloc.allocate("c", 1, {"a": ["0"], "b": ["1"]})) == 1


def test_round_robin_rotation_breaks_ties():
    alloc = GpuAllocator(FOUR, policy="round-robin")
    first = alloc.allocate("a", 1, {})
    second = alloc.allocate("b", 1, {})  # same (empty) picture: the cursor moves on
    assert first != second


# --- limits ------------------------------------------------------------------------------

LIMITS = {"alice": 3, "@students": 1, "@staff": 2, "*": 0}


@pytest.mark.parametrize("user, groups, expected", [
    ("alice", ["students"], 3),              # the user's own limit beats their group's
    ("bob", ["students"], 1),                # the group's limit beats *
    ("bob", ["students", "staff"], 2),       # several groups: the most generous one
    ("bob", ["staff", "students"], 2),
    ("bob", ["choir"], 0),                   # no limit for the group: *
    ("bob", [], 0),
])
def test_limit_for_user_beats_group_beats_star(user, groups, expected):
    assert GpuAllocator(FOUR, limits=LIMITS).limit_for(user, groups) == expected


def test_no_limits_means_no_limit():
    assert GpuAllocator(FOUR).limit_for("bob", ["students"]) is None
    assert GpuAllocator(FOUR, limits={"@staff": 1}).limit_for("bob", ["students"]) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_a_request_over_the_limit_is_refused_with_the_limit(policy):
    alloc = GpuAllocator(FOUR, policy=policy, limits={"@students": 1})
    err = refusal(alloc, "bob", 2, groups=["students"])
    assert str(err) == ("your limit is 1 GPU(s) per lab and this profile asks for 2; "
                        "choose a profile with fewer GPUs")
    assert alloc.allocate("bob", 1, {}, ["students"])
    assert alloc.allocate("carol", 2, {}, ["staff"])


# --- pins --------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
def test_a_pinned_user_gets_only_their_pinned_gpus(policy):
    alloc = GpuAllocator(FOUR, policy=policy, pins={"alice": ["2", "3"]})
    assert set(alloc.allocate("alice", 2, {})) == {"2", "3"}
    assert set(alloc.allocate("alice", 1, {})) <= {"2", "3"}


@pytest.mark.parametrize("policy", POLICIES)
def test_others_never_get_a_pinned_gpu(policy):
    alloc = GpuAllocator(FOUR, policy=policy, pins={"alice": ["2"], "bob": ["0"]})
    for _ in range(4):  # round-robin's cursor must not wander onto a pinned GPU either
        assert set(alloc.allocate("carol", 1, {})) <= {"1", "3"}
        assert set(alloc.allocate("carol", 2, {})) == {"1", "3"}


def test_a_pinned_gpu_stays_free_for_its_user_when_everything_else_is_busy():
    alloc = GpuAllocator(["0", "1"], pins={"alice": ["1"]})
    err = refusal(alloc, "bob", 1, {"carol": ["0"]})
    assert "choose the CPU profile or try later" in str(err)
    assert alloc.allocate("alice", 1, {"carol": ["0"]}) == ["1"]


def test_a_pinned_user_asking_for_more_than_their_pins_is_told_how_many():
    alloc = GpuAllocator(FOUR, pins={"alice": ["2"]})
    err = refusal(alloc, "alice", 2)
    assert str(err) == ("you may use at most 1 GPU(s) on this server and this profile "
                        "asks for 2; choose a profile with fewer GPUs")


def test_two_users_pinned_to_one_gpu_take_turns_under_exclusive():
    alloc = GpuAllocator(FOUR, pins={"alice": ["1"], "bob": ["1"]})
    assert alloc.allocate("alice", 1, {}) == ["1"]
    assert "try later" in str(refusal(alloc, "bob", 1, {"alice": ["1"]}))


def test_a_pin_to_an_unknown_gpu_is_refused_at_start():
    with pytest.raises(ValueError, match=r"not in the inventory: \['7'\]"):
        GpuAllocator(FOUR, pins={"alice": ["1", "7"]})


def test_an_unknown_policy_is_refused_at_start():
    with pytest.raises(ValueError, match="unknown GPU policy 'fair'; use one of exclusive"):
        GpuAllocator(FOUR, policy="fair")


# --- no GPU at all -----------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("devices", [[], FOUR])
def test_zero_gpus_asked_is_always_an_empty_grant(policy, devices):
    alloc = GpuAllocator(devices, policy=policy, limits={"*": 0})
    everything_held = {"bob": list(devices), "carol": list(devices)}
    assert alloc.allocate("alice", 0, everything_held) == []


def test_a_negative_count_is_a_programming_error():
    with pytest.raises(ValueError, match="0 or more"):
        GpuAllocator(FOUR).allocate("alice", -1, {})


@pytest.mark.parametrize("policy", POLICIES)
def test_a_host_without_gpus_says_so(policy):
    err = refusal(GpuAllocator([], policy=policy), "alice", 1)
    assert str(err) == "this server has no GPUs; choose the CPU profile"


# --- parse_assignments -------------------------------------------------------------------

def test_parse_assignments_reads_pairs_and_skips_blanks():
    raw = " alice = 2 ;; @students=1;*=0; "
    assert parse_assignments(raw, "how") == {"alice": "2", "@students": "1", "*": "0"}
    assert parse_assignments("", "how") == {}


@pytest.mark.parametrize("raw, problem", [
    ("alice", "'alice' is not NAME=VALUE"),
    ("=2", "'=2' is not NAME=VALUE"),
    ("alice=", "'alice=' is not NAME=VALUE"),
    ("alice=1;alice=2", "'alice' appears twice"),
])
def test_parse_assignments_errors_quote_the_part_and_say_how(raw, problem):
    with pytest.raises(ValueError) as info:
        parse_assignments(raw, "write e.g. alice=2")
    assert str(info.value) == f"{problem}; write e.g. alice=2"


# --- properties: the hub as a state machine ----------------------------------------------

USERS = ["alice", "bob", "carol", "dave", "erin"]
GROUPS = {"alice": ["students"], "bob": ["students", "staff"], "carol": ["staff"],
          "dave": [], "erin": ["students"]}
LIMIT_KEYS = USERS + ["@students", "@staff", "*"]

PROPERTY_SETTINGS = settings(max_examples=200, stateful_step_count=30, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


def _config(min_devices=0):
    """A strategy for (devices, policy, limits, pins) as GPU_DEVICES/POLICY/LIMITS/PINS give."""
    @st.composite
    def config(draw):
        devices = [str(i) for i in range(draw(st.integers(min_devices, 5)))]
        policy = draw(st.sampled_from(POLICIES))
        limits = draw(st.dictionaries(st.sampled_from(LIMIT_KEYS), st.integers(0, 4), max_size=4))
        pins = {}
        if devices:
            pins = draw(st.dictionaries(
                st.sampled_from(USERS),
                st.lists(st.sampled_from(devices), min_size=1, unique=True), max_size=2))
        return devices, policy, limits, pins
    return config()


class Hub(RuleBasedStateMachine):
    """Labs start (grant, then a labelled container), stop, crash; the hub restarts."""

    @initialize(config=_config())
    def configure(self, config):
        self.devices, self.policy, self.limits, self.pins = config
        self.allocator = self._new_allocator()
        self.running: dict[str, list[str]] = {}   # what Docker labels say
        self.pending: dict[str, list[str]] = {}   # GpuDockerSpawner._gpu_state.grants
        self.asked: dict[str, int] = {}
        self.ever_released = False

    def _new_allocator(self):
        return GpuAllocator(list(self.devices), policy=self.policy, limits=dict(self.limits),
                            pins={u: list(d) for u, d in self.pins.items()})

    def _labs(self):
        return [(u, ids) for labs in (self.running, self.pending) for u, ids in labs.items()]

    def _held_by_others(self, user):
        """What GpuDockerSpawner.grant_gpus passes: labelled containers plus pending grants."""
        held: dict[str, list[str]] = {}
        for u, ids in self._labs():
            if ids and u != user:
                held.setdefault(u, []).extend(ids)
        return held

    def _candidates(self, user):
        if user in self.pins:
            return list(self.pins[user])
        reserved = {d for ds in self.pins.values() for d in ds}
        return [d for d in self.devices if d not in reserved]

    def _limit(self, user):
        return self.allocator.limit_for(user, GROUPS[user])

    # --- rules ---
    @rule(user=st.sampled_from(USERS), count=st.integers(0, 4))
    def start(self, user, count):
        if user in self.running or user in self.pending:
            return  # one lab per user: JupyterHub refuses to start a running server
        held = self._held_by_others(user)
        candidates = self._candidates(user)
        try:
            ids = self.allocator.allocate(user, count, held, GROUPS[user])
        except NoGpuAvailable as err:
            self._check_refusal_is_real(user, count, held, candidates, err)
            return
        if count == 0:
            assert ids == []
        elif self.policy == "shared":
            assert ids == candidates
        else:
            assert len(ids) == count == len(set(ids)) and set(ids) <= set(candidates), ids
        self.asked[user] = count
        self.pending[user] = ids

    def _check_refusal_is_real(self, user, count, held, candidates, err):
        assert count > 0, "a CPU lab must never be refused"
        limit = self._limit(user)
        if limit is not None and count > limit:
            return
        if not self.devices or count > len(candidates):
            return
        assert self.policy == "exclusive", f"{self.policy} refused {count} GPU(s): {err}"
        busy = {d for ds in held.values() for d in ds}
        free = [d for d in candidates if d not in busy]
        assert len(free) < count, f"leak: {free} free for {user}, needs {count}; refused: {err}"
        assert "choose the CPU profile or try later" in str(err)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def container_up(self, data):
        user = data.draw(st.sampled_from(sorted(self.pending)))
        self.running[user] = self.pending.pop(user)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def start_fails(self, data):
        # The spawner removes the half-created container and drops the pending grant.
        del self.pending[data.draw(st.sampled_from(sorted(self.pending)))]
        self.ever_released = True

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def stop(self, data):
        del self.running[data.draw(st.sampled_from(sorted(self.running)))]
        self.ever_released = True

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def crash(self, data):
        # The container vanishes without the hub knowing: Docker is the truth, so the
        # allocator sees exactly what it sees after a stop.
        del self.running[data.draw(st.sampled_from(sorted(self.running)))]
        self.ever_released = True

    @rule(data=st.data())
    def hub_restart(self, data):
        # _grants lives in the hub process and is gone; a spawn in flight either got its
        # labelled container created before the hub died, or it did not.
        for user in sorted(self.pending):
            if data.draw(st.booleans(), label=f"{user}'s container was created"):
                self.running[user] = self.pending[user]
            else:
                self.ever_released = True
        self.pending = {}
        self.allocator = self._new_allocator()

    # --- invariants ---
    @invariant()
    def every_held_gpu_is_in_the_inventory(self):
        for user, ids in self._labs():
            assert set(ids) <= set(self.devices), (user, ids, self.devices)

    @invariant()
    def exclusive_never_double_books(self):
        if self.policy != "exclusive":
            return
        held = [d for _, ids in self._labs() for d in ids]
        assert len(held) == len(set(held)), self._labs()

    @invariant()
    def nobody_exceeds_their_limit(self):
        for user, ids in self._labs():
            limit = self._limit(user)
            if limit is None:
                continue
            assert self.asked[user] <= limit, (user, self.asked[user], limit)
            if self.policy != "shared":  # shared: every GPU lab sees every GPU, by design
                assert len(ids) <= limit, (user, ids, limit)

    @invariant()
    def pinned_gpus_go_only_to_their_users(self):
        for user, ids in self._labs():
            for d in ids:
                pinned_to = {u for u, ds in self.pins.items() if d in ds}
                assert not pinned_to or user in pinned_to, (d, user, self.pins)
            if user in self.pins:
                assert set(ids) <= set(self.pins[user]), (user, ids, self.pins)

    @invariant()
    def round_robin_stays_balanced_while_nothing_stops(self):
        if self.policy != "round-robin" or self.ever_released:
            return
        # Over the GPUs unpinned users share; pinned users' GPUs may overlap arbitrarily.
        reserved = {d for ds in self.pins.values() for d in ds}
        load = collections.Counter({d: 0 for d in self.devices if d not in reserved})
        for user, ids in self._labs():
            if user not in self.pins:
                load.update(ids)
        if load:
            assert max(load.values()) - min(load.values()) <= 1, load


Hub.TestCase.settings = PROPERTY_SETTINGS
TestHub = Hub.TestCase


@PROPERTY_SETTINGS
@given(n=st.integers(1, 6), counts=st.lists(st.integers(1, 6), max_size=30), data=st.data())
def test_round_robin_starts_without_stops_stay_within_one(n, counts, data):
    devices = [str(i) for i in range(n)]
    alloc = GpuAllocator(devices, policy="round-robin")
    held: dict[str, list[str]] = {}
    for i, count in enumerate(c for c in counts if c <= n):
        if data.draw(st.booleans(), label="hub restart"):
            alloc = GpuAllocator(devices, policy="round-robin")
        held[f"u{i}"] = alloc.allocate(f"u{i}", count, held)
        load = collections.Counter({d: 0 for d in devices})
        for ids in held.values():
            load.update(ids)
        assert max(load.values()) - min(load.values()) <= 1, load


@PROPERTY_SETTINGS
@given(config=_config(min_devices=1), user=st.sampled_from(USERS), count=st.integers(1, 5),
       held=st.dictionaries(st.sampled_from(USERS), st.lists(st.sampled_from(FOUR), max_size=3)))
def test_shared_grants_are_all_candidates_whatever_is_held(config, user, count, held):
    devices, _, _, pins = config
    alloc = GpuAllocator(devices, policy="shared", pins=pins)
    reserved = {d for ds in pins.values() for d in ds}
    candidates = pins.get(user) or [d for d in devices if d not in reserved]
    if count > len(candidates):
        with pytest.raises(NoGpuAvailable):
            alloc.allocate(user, count, held)
    else:
        assert alloc.allocate(user, count, held) == candidates


# --- MIG instances: devices like GPUs, asked for by slice size ----------------------------

# GPU 0 partitioned (inventory-mig.json of the double: 3g.20gb, 2g.10gb, 1g.5gb, 1g.5gb), GPU 1 whole.
A, B, C, D = "MIG-a", "MIG-b", "MIG-c", "MIG-d"
MIG_DEVICES = [A, B, C, D, "GPU-1"]
SLICES = {A: "3g.20gb", B: "2g.10gb", C: "1g.5gb", D: "1g.5gb"}


def mig_allocator(policy="exclusive", **kw):
    return GpuAllocator(MIG_DEVICES, policy=policy, slices=SLICES, **kw)


def test_a_slice_is_granted_only_instances_of_its_profile_and_never_twice():
    alloc = mig_allocator()
    assert alloc.allocate("alice", 1, {}, gpu_slice="1g.5gb") == [C]
    assert alloc.allocate("bob", 1, {"alice": [C]}, gpu_slice="1g.5gb") == [D]
    err = refusal_of(alloc, "carol", 1, {"alice": [C], "bob": [D]}, gpu_slice="1g.5gb")
    assert str(err) == ("all 2 1g.5gb MIG instances you may use are in use (0 free, this "
                        "profile needs 1); choose the CPU profile or try later")
    assert err.reason == "gpus_busy"  # so the start waits in line, as for a GPU
    assert alloc.allocate("carol", 1, {"alice": [C], "bob": [D]}, gpu_slice="3g.20gb") == [A]


def test_a_whole_gpu_request_never_gets_a_mig_instance():
    alloc = mig_allocator()
    assert alloc.allocate("alice", 1, {}) == ["GPU-1"]
    err = refusal_of(alloc, "bob", 2, {})
    assert str(err) == (
        "you may use at most 1 GPU(s) on this server and this profile asks for 2; choose a "
        "profile with fewer GPUs (this server's GPUs are partly or wholly MIG instances: "
        "1g.5gb, 2g.10gb, 3g.20gb; a profile asks for one with gpu_slice)")


def test_a_slice_the_server_lacks_is_refused_saying_what_it_has():
    err = refusal_of(mig_allocator(), "alice", 1, {}, gpu_slice="7g.40gb")
    assert str(err).endswith("(this server's MIG instances are 1g.5gb, 2g.10gb, 3g.20gb)")
    assert err.reason == "gpu_limit"


def test_an_out_of_service_instance_is_skipped_and_the_last_one_makes_the_start_wait():
    alloc = mig_allocator()
    assert alloc.allocate("alice", 1, {}, out_of_service={C}, gpu_slice="1g.5gb") == [D]
    err = refusal_of(alloc, "alice", 2, {}, out_of_service={C}, gpu_slice="1g.5gb")
    assert str(err) == ("GPU MIG-c is out of service and this profile needs 2 of the 2 "
                        "1g.5gb MIG instances you may use; choose the CPU profile or try later")


def test_pins_and_limits_hold_for_instances():
    alloc = mig_allocator(pins={"alice": [D]}, limits={"*": 1})
    assert alloc.allocate("alice", 1, {}, gpu_slice="1g.5gb") == [D]
    assert alloc.allocate("bob", 1, {}, gpu_slice="1g.5gb") == [C]  # D is alice's
    assert refusal_of(alloc, "bob", 2, {}, gpu_slice="1g.5gb").reason == "gpu_limit"


def test_shared_and_round_robin_policies_share_instances_of_the_slice():
    assert mig_allocator("shared").allocate("alice", 1, {}, gpu_slice="1g.5gb") == [C, D]
    rr = mig_allocator("round-robin")
    assert rr.allocate("alice", 1, {"bob": [C]}, gpu_slice="1g.5gb") == [D]


def refusal_of(allocator, user, count, held, **kw):
    with pytest.raises(NoGpuAvailable) as info:
        allocator.allocate(user, count, held, **kw)
    return info.value
