"""`invoke doctor`: is this GPU server ready for labs? One line per check, a fix for each
failure, exit 1 on any failure; run it on a new or upgraded server before users notice.

Each check reads the real thing: the driver through ``NVIDIA_SMI`` (as `invoke up` does),
the toolkit through ``NVIDIA_CTK``, the Docker engine, and a throw-away lab container given
one GPU, which must see exactly that GPU (and, unless ``--no-tensorflow``, compute on it
with TensorFlow). The verdicts are pure functions of what was read (unit-tested); the
commands are run by :func:`run_checks`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

from gpuhub.core import gpus as gpu_inventory
from gpuhub.core.gpus import RESET_REQUIRED
from gpuhub.core.outofservice import nvidia_refusal

OK, WARN, FAIL = "ok", "warn", "FAIL"
# Container escape through the toolkit's hooks: fixed in 1.17.8 (NVIDIA security bulletin
# of July 2025, CVE-2025-23266 "NVIDIAScape").
TOOLKIT_SAFE = (1, 17, 8)
# 1.18.x's default runtime mode ignores swarm-resource (fixed in 1.19.0).
TOOLKIT_SWARM_BROKEN = ((1, 18, 0), (1, 19, 0))
# Docker sends --gpus through CDI from 29.2 on (moby commit 86f122af).
DOCKER_CDI = (29, 2)
# The name last: it is the one field that may hold a comma.
QUERY = ["--query-gpu=index,uuid,utilization.gpu,driver_version,name", "--format=csv,noheader"]


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def version_tuple(text: str) -> tuple[int, ...]:
    """The first dotted version in ``text`` as numbers, () if none."""
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part) for part in found.groups() if part is not None) if found else ()


def driver_check(code: int, out: str, err: str, missing: bool) -> tuple[Check, list[dict]]:
    """The driver and NVML (nvidia-smi works), and each GPU's line."""
    if missing:
        return Check("driver", FAIL, "nvidia-smi not found (NVIDIA_SMI)",
                     "install the NVIDIA driver, or set NVIDIA_SMI to its nvidia-smi"), []
    gpus, broken = [], []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 5 and parts[1].startswith(("GPU-", "MIG-")):
            gpus.append({"index": parts[0], "uuid": parts[1], "utilisation": parts[2],
                         "driver": parts[3], "name": ", ".join(parts[4:])})
        elif line.strip():
            broken.append(line.strip())
    if not gpus:
        why = gpu_inventory.smi_failure(out, err, code)
        fix = ("reboot after a driver upgrade (or reload the NVIDIA kernel modules)"
               if "mismatch" in why else "check the driver: `dmesg | grep -i -e nvrm -e xid`")
        return Check("driver", FAIL, f"nvidia-smi failed: {why}", fix), []
    return Check("driver", OK, f"driver {gpus[0]['driver']}, {len(gpus)} GPU(s) read"
                 + (f"; {len(broken)} line(s) not read" if broken else "")), gpus


def gpu_checks(code: int, out: str, gpus: list[dict]) -> list[Check]:
    """Each GPU healthy: one in error after an Xid, a lost GPU's line, or an exit code with
    the data."""
    checks = [Check(f"GPU {g['index']}", OK, f"{g['name']} {g['uuid']}")
              if g.get("utilisation") != RESET_REQUIRED else
              Check(f"GPU {g['index']}", FAIL, f"{g['name']} {g['uuid']} needs a reset (nvidia-smi "
                    f"reads {RESET_REQUIRED}: an Xid left it in error)",
                    f"`dmesg | grep -i xid`; stop the labs on it, then `nvidia-smi -r -i "
                    f"{g['index']}` or a reboot; gpuhub keeps it out of service until it reads "
                    "healthy")
              for g in gpus]
    for line in out.splitlines():
        if line.startswith("Unable to determine the device handle"):
            checks.append(Check("GPU ?", FAIL, line.strip(),
                                "a GPU fell off the bus: `dmesg | grep -i xid`, then "
                                "`nvidia-smi -r` or a reboot; until then every GPU lab fails "
                                "to start on the legacy path"))
    if gpus and code == 14:
        checks.append(Check("GPU infoROM", WARN, "nvidia-smi exited 14: an infoROM is corrupted",
                            "the GPU works; ask the vendor to reflash its infoROM"))
    return checks


def toolkit_check(text: str, missing: bool, swarm: bool) -> Check:
    if missing:
        return Check("toolkit", FAIL, "nvidia-ctk not found (NVIDIA_CTK)",
                     "install nvidia-container-toolkit (>= 1.17.8)")
    version = version_tuple(text)
    shown = ".".join(map(str, version)) or "unknown"
    if not version:
        return Check("toolkit", FAIL, f"no version in {text.strip()[:80]!r}",
                     "check `nvidia-ctk --version`")
    if version < TOOLKIT_SAFE:
        return Check("toolkit", FAIL, f"nvidia-container-toolkit {shown} has a container "
                     "escape (CVE-2025-23266)", "upgrade nvidia-container-toolkit to >= 1.17.8")
    if swarm and TOOLKIT_SWARM_BROKEN[0] <= version < TOOLKIT_SWARM_BROKEN[1]:
        return Check("toolkit", FAIL, f"nvidia-container-toolkit {shown} ignores Swarm's "
                     "grant (swarm-resource) in its default mode: labs would get no GPU",
                     "upgrade to >= 1.19, or set mode = \"legacy\" under "
                     "[nvidia-container-runtime] in /etc/nvidia-container-runtime/config.toml")
    return Check("toolkit", OK, f"nvidia-container-toolkit {shown}")


def docker_check(version: str, cgroup: str) -> Check:
    if not version:
        return Check("docker", FAIL, "the Docker engine does not answer",
                     "start Docker; this user must be allowed to use it")
    path = "CDI path likely (>= 29.2)" if version_tuple(version) >= DOCKER_CDI else "legacy hook path"
    return Check("docker", OK, f"Docker {version} ({path}), cgroup {cgroup}")


def lab_check(granted: str, code: int, out: str, err: str, tensorflow: bool) -> list[Check]:
    """The throw-away lab given ``granted``: it must see exactly that GPU; TensorFlow must
    see it and compute."""
    if code != 0:
        refusal = nvidia_refusal(err)
        why = (f"the NVIDIA toolkit refused it: {refusal.reason}" if refusal
               else gpu_inventory.smi_failure(out, err, code))
        return [Check("lab container", FAIL, f"a lab given GPU {granted} did not start: {why}",
                      "the GPU lines above name a faulty GPU; else read `docker run --gpus "
                      f"device={granted} <lab image>`'s error")]
    try:
        report = json.loads(out)
        seen = report["nvidia_smi"]["gpus"]
    except (ValueError, KeyError, TypeError):
        return [Check("lab container", FAIL, f"gpu-check printed no report: {out.strip()[:120]!r}",
                      "rebuild the lab image: `invoke build`")]
    path = "CDI" if report.get("NVIDIA_VISIBLE_DEVICES") == "void" else "legacy"
    if len(seen) != 1 or granted not in seen[0]:
        checks = [Check("lab container", FAIL, f"given GPU {granted}, the lab's nvidia-smi "
                        f"lists {seen or 'nothing'}", "check the toolkit's configuration")]
    else:
        checks = [Check("lab container", OK, f"sees exactly GPU {granted} ({path} path)")]
    tf = report.get("tensorflow")
    if not tensorflow or tf is None:
        checks.append(Check("tensorflow", WARN, "not run (--no-tensorflow)"))
    elif not tf.get("imported"):
        checks.append(Check("tensorflow", FAIL, f"does not import: {tf.get('error')}",
                            "rebuild the lab image: `invoke build`"))
    elif len(tf.get("gpus") or []) != 1 or not tf.get("computation_ok"):
        checks.append(Check("tensorflow", FAIL, f"TensorFlow {tf.get('version')} sees "
                            f"{len(tf.get('gpus') or [])} GPU(s)",
                            "the lab's CUDA cannot use this driver: upgrade the driver to one "
                            "TensorFlow's CUDA supports (https://www.tensorflow.org/install/pip)"))
    else:
        checks.append(Check("tensorflow", OK, f"TensorFlow {tf.get('version')} computes on "
                            f"{tf['gpus'][0]}"))
    return checks


def run(args: list[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", f"{args[0]} did not answer within {timeout:g} s"
    except OSError as err:
        return 127, "", str(err)
    return done.returncode, done.stdout, done.stderr


def mig_check(code: int, modes: str, listed: str) -> Check:
    """MIG mode per GPU (``--query-gpu=index,uuid,mig.mode.current``) against the instances
    ``nvidia-smi -L`` lists: a GPU in MIG mode with no instance is of no use to any lab."""
    rows = [[part.strip() for part in line.split(",")] for line in modes.splitlines()
            if line.count(",") == 2]
    instances = gpu_inventory.parse_list(listed)
    enabled = [(index, uuid) for index, uuid, mode in rows if mode == "Enabled"]
    empty = [index for index, uuid in enabled if not instances.get(uuid)]
    if empty:
        return Check("MIG", WARN, f"GPU {', '.join(empty)} is in MIG mode with no MIG instance: "
                     "no lab can use it", "create instances (`nvidia-smi mig -cgi 1g.5gb -C -i "
                     f"{empty[0]}`, or nvidia-mig-parted) or disable MIG (`nvidia-smi -mig 0 -i "
                     f"{empty[0]}`), then `invoke up`")
    if enabled:
        said = "; ".join(f"GPU {index}: " + ", ".join(g.mig_profile for g in instances[uuid])
                         for index, uuid in enabled)
        return Check("MIG", OK, f"on ({said}); labs are given these instances, profiles ask "
                                "for one with gpu_slice")
    return Check("MIG", OK, "off" if rows else f"not reported (exit {code})")


def run_checks(settings, tensorflow: bool = True) -> list[Check]:
    """Every check on this host, in order."""
    checks: list[Check] = []
    code, out, _ = run(["docker", "version", "--format", "{{.Server.Version}}"])
    version = out.strip() if code == 0 else ""
    _, cgroup, _ = run(["docker", "info", "--format", "v{{.CgroupVersion}} {{.CgroupDriver}}"])
    checks.append(docker_check(version, cgroup.strip() or "?"))

    smi = shutil.which(settings.nvidia_smi)
    code, out, err = run([smi, *QUERY], timeout=30) if smi else (127, "", "")
    driver, gpus = driver_check(code, out, err, smi is None)
    checks.append(driver)
    checks += gpu_checks(code, out, gpus)
    if gpus:
        mig_code, mig, _ = run([smi, "--query-gpu=index,uuid,mig.mode.current",
                                "--format=csv,noheader"], timeout=30)
        _, listed, _ = run([smi, "-L"], timeout=30)
        checks.append(mig_check(mig_code, mig, listed))

    ctk = shutil.which(settings.nvidia_ctk)
    _, text, _ = run([ctk, "--version"]) if ctk else (127, "", "")
    checks.append(toolkit_check(text, ctk is None, settings.mode == "swarm"))

    if version and gpus:
        # A GPU in error fails its own line above; the lab check tries a healthy one.
        first = next((g for g in gpus if g["utilisation"] != RESET_REQUIRED), gpus[0])["uuid"]
        code, out, err = run(["docker", "run", "--rm", "--pull", "never",
                              "--gpus", f"device={first}",
                              "-e", f"GPUHUB_GPUS={first}", "--entrypoint", "gpu-check",
                              settings.lab_image] + ([] if tensorflow else ["--no-tensorflow"]),
                             timeout=300)
        if code == 125 and ("No such image" in err or "Unable to find image" in err):
            checks.append(Check("lab container", FAIL, f"no lab image {settings.lab_image}",
                                "build it: `invoke build`"))
        else:
            checks += lab_check(first, code, out, err, tensorflow)
    return checks


def report_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    if not any(c.status == FAIL for c in checks):
        lines.append("ready for labs")
    return "\n".join(lines)


def report_json(checks: list[Check]) -> str:
    return json.dumps({"ready": not any(c.status == FAIL for c in checks),
                       "checks": [asdict(c) for c in checks]}, indent=2)
