"""Property: any JSON mutated from a real lab create is refused, or rebuilt hardened.

The invariants are written here, independently of the broker's own checks: what a body
Docker receives may hold, field by field.
"""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuhub.broker.policy import Call, Refused
from gpuhub.core.lablimits import LOG_CONFIG
from harness.fake_docker import GPUS, LAB_IMAGE, PROJECT, SHARED, policy
from harness.hostile_docker import gpuhub_create

LAB = f"{PROJECT}-lab-bob"
BASE = gpuhub_create(PROJECT, LAB_IMAGE, GPUS[0], SHARED)
POLICY = policy()

TOP = {"Image", "Cmd", "Env", "Labels", "ExposedPorts", "Volumes", "HostConfig",
       "AttachStdout", "AttachStderr"}
HOST = {"NetworkMode", "Binds", "CapDrop", "CapAdd", "SecurityOpt", "Privileged", "PidsLimit",
        "RestartPolicy", "AutoRemove", "Memory", "CpuPeriod", "CpuQuota", "DeviceRequests",
        "LogConfig"}
# Docker fields an attacker would reach for, and what they would set them to.
DANGEROUS = ["Privileged", "CapAdd", "Binds", "NetworkMode", "PidMode", "IpcMode", "UTSMode",
             "UsernsMode", "SecurityOpt", "Devices", "DeviceRequests", "Mounts", "VolumesFrom",
             "LogConfig", "RestartPolicy", "OomScoreAdj", "Ulimits", "Sysctls", "Runtime",
             "PortBindings", "User", "Entrypoint", "StopSignal", "Labels", "Env", "Image",
             "CgroupParent", "MaskedPaths", "PidsLimit", "Count", "DeviceIDs", "Capabilities"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40)
    | st.sampled_from(["host", "ALL", "/:/host", "seccomp=unconfined", "all", "root",
                       f"{PROJECT}-labs", "container:hub", GPUS[1], "GPU-zzzz", "SIGKILL",
                       f"{PROJECT}-home-carol:/home/jovyan/work:rw", "NVIDIA_VISIBLE_DEVICES=all"])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(DANGEROUS) | st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def _key_variants(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from([key, key.lower(), key.upper(), key.swapcase()])


@st.composite
def mutated_bodies(draw) -> str:
    """BASE with a few mutations: a value replaced, a key added or removed, a case changed."""
    body = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "host", "labels", "gpu"]))
        host = body.get("HostConfig") if isinstance(body.get("HostConfig"), dict) else {}
        requests = host.get("DeviceRequests")
        target = {"top": body, "host": host or None, "labels": body.get("Labels"),
                  "gpu": requests[0] if isinstance(requests, list) and requests else None}[where]
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(["set", "add", "drop", "recase"]))
        if action == "set" and target:
            target[draw(st.sampled_from(sorted(target)))] = draw(json_values)
        elif action == "add":
            target[draw(_key_variants(draw(st.sampled_from(DANGEROUS))))] = draw(json_values)
        elif action == "drop" and target:
            target.pop(draw(st.sampled_from(sorted(target))))
        elif action == "recase" and target:
            key = draw(st.sampled_from(sorted(target)))
            target[draw(_key_variants(key))] = target.pop(key)
    text = json.dumps(body)
    if draw(st.booleans()):  # the same key twice, as raw JSON can say and a dict cannot
        key = draw(st.sampled_from(["Privileged", "NetworkMode", "Binds", "HostConfig"]))
        text = text.replace('"HostConfig": {', f'"HostConfig": {{"{key}": true, ', 1)
    return text


def hardened(sent: dict) -> list[str]:
    """What in a body Docker would receive breaks the lab hardening (empty: nothing)."""
    problems = []
    if set(sent) - TOP:
        problems.append(f"top-level keys {set(sent) - TOP}")
    host = sent["HostConfig"]
    if set(host) - HOST:
        problems.append(f"HostConfig keys {set(host) - HOST}")
    if sent["Image"] not in POLICY.images:
        problems.append("image")
    if host["Privileged"] is not False or host["CapAdd"] is not None:
        problems.append("privileges")
    if host["CapDrop"] != ["ALL"] or host["SecurityOpt"] != ["no-new-privileges"]:
        problems.append("capabilities or no-new-privileges")
    if host["NetworkMode"] != f"{PROJECT}-labs" or host["RestartPolicy"] != {"Name": "no"}:
        problems.append("network or restart policy")
    if not 1 <= host["PidsLimit"] <= POLICY.pids_limit:
        problems.append("PIDs limit")
    if host["LogConfig"] != LOG_CONFIG:
        problems.append(f"log {host['LogConfig']}")
    if host.get("CgroupParent", "") != POLICY.labs_cgroup_parent:
        problems.append(f"cgroup parent {host.get('CgroupParent')}")
    if not set(host["Binds"]) <= {f"{PROJECT}-home-bob:/home/jovyan/work:rw",
                                  f"{SHARED}:/home/jovyan/shared:ro"}:
        problems.append(f"binds {host['Binds']}")
    gpus = [d for r in host.get("DeviceRequests", []) for d in r["DeviceIDs"]]
    if any(r["Count"] != 0 or r["Capabilities"] != [["gpu"]] for r in host.get("DeviceRequests", [])):
        problems.append("device request")
    if not set(gpus) <= set(GPUS):
        problems.append("GPUs outside the inventory")
    env = dict(e.split("=", 1) for e in sent["Env"])
    if env["NVIDIA_VISIBLE_DEVICES"] != (",".join(gpus) or "void"):
        problems.append("NVIDIA_VISIBLE_DEVICES")
    if sent["Labels"].get("gpuhub.gpus") != ",".join(gpus) or \
            sent["Labels"].get("gpuhub.project") != PROJECT:
        problems.append("labels")
    if any(k.startswith("com.docker.") for k in sent["Labels"]):
        problems.append("compose labels")
    return problems


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_bodies())
def test_mutated_creates_are_refused_or_rebuilt_hardened(text):
    try:
        plan = POLICY.plan(Call("POST", f"/v1.41/containers/create?name={LAB}", text.encode()))
    except Refused:
        return
    sent = json.loads(plan.body)
    assert hardened(sent) == [], (text, sent)


def test_the_unmutated_body_is_rebuilt_hardened():
    plan = POLICY.plan(Call("POST", f"/v1.41/containers/create?name={LAB}",
                            json.dumps(BASE).encode()))
    assert hardened(json.loads(plan.body)) == []
