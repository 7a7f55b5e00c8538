"""What the Docker broker lets the hub do: parse each request, check it, rebuild it.

The hub reaches Docker only through the broker (``gpuhub/broker/server.py``). For every request
:meth:`Policy.plan` decides, without any I/O, what the broker sends to Docker: a call on
a short allow-list, with a query and a body the broker built itself from checked values.
Anything it cannot parse, or that is not on the allow-list, raises :class:`Refused`,
which names the field and the rule. Nothing the hub sent reaches Docker as it was sent.

Decoding is stricter than Docker's: Docker's JSON decoder matches keys in any letter
case and keeps the last of duplicate keys, so a body with a key written in another case,
a duplicate key (in any case), a non-ASCII key, an unknown key, NaN or a value of the
wrong type is refused as a whole.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode

from gpuhub.core import names
from gpuhub.core.accounts import USERNAME_PATTERN
from gpuhub.core.labels import GPUS as LABEL_GPUS
from gpuhub.core.labels import PROFILE as LABEL_PROFILE
from gpuhub.core.labels import PROJECT as LABEL_PROJECT
from gpuhub.core.labels import SINCE as LABEL_SINCE
from gpuhub.core.labels import USER as LABEL_USER
from gpuhub.core.lablimits import LOG_CONFIG, TMP_PATH, storage_opt

MAX_BODY = 64 * 1024  # a lab's create body is about 2 KiB
MAX_STRING = 8 * 1024
MAX_ITEMS = 256
MIN_API = (1, 40)  # older versions make Docker honour legacy fields (a HostConfig on start)
STOP_TIMEOUT_MAX = 600
REFUSED = names.BROKER_REFUSED

_VERSION = re.compile(r"/v([0-9]{1,4})\.([0-9]{1,4})(/.*)")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,254}")
_SUFFIX = re.compile(r"[a-z0-9-]{1,128}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PORT = re.compile(r"[0-9]{1,5}/tcp")
_SINCE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\+00:00|Z)")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_USER = re.compile(USERNAME_PATTERN)
_TRUE, _FALSE = ("1", "true", "True"), ("0", "false", "False")
# The only NVIDIA_* variables a lab may set, and what the NVIDIA runtime reads them for.
NVIDIA_CAPABILITIES = frozenset({"compute", "utility"})
# HostConfig fields whose absence is itself the hardening, checked again at start.
# (CgroupnsMode is not among them: a create never sets it, so Docker records its own
# default, which is "host" on cgroup v1 hosts.)
_HOST_NAMESPACES = ("PidMode", "IpcMode", "UTSMode", "UsernsMode")


class Refused(Exception):
    """A request the broker does not send on: ``str()`` is the one line the hub gets."""

    def __init__(self, field: str, rule: str, status: int = 403):
        self.field, self.rule, self.status = field, rule, status
        super().__init__(f"{REFUSED}: {field}: {rule}")


@dataclass(frozen=True)
class Call:
    """One HTTP request as the broker received it: the raw target and the whole body."""

    method: str
    target: str  # path and query exactly as sent
    body: bytes = b""


@dataclass(frozen=True)
class Plan:
    """What the broker sends Docker, and what it checks around it."""

    method: str
    path: str  # with the API version prefix, query included
    body: bytes | None = None
    # A container ID or name that must be one of this project's labs (and pass the
    # hardening check, for start) before the call is made on its full ID.
    lab: str | None = None
    check_recorded: bool = False
    # "labs": answer only with the project's containers (list) or 404 (inspect).
    only_project: str | None = None
    # WORK_QUOTA: the escaped user whose work folder is made ready (with the lab's image)
    # before the create, or removed after Docker removed the work volume.
    work_folder: str | None = None
    image: str | None = None
    removes_work_folder: str | None = None
    # Answered by the broker itself, not Docker: "work-folders" (each one's use).
    local: str | None = None


# --- strict decoding ---------------------------------------------------------------------

def _pairs(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, str] = {}
    for key, _ in pairs:
        if not key.isascii():
            raise Refused(repr(key), "keys must be ASCII")
        folded = key.lower()
        if folded in seen:
            raise Refused(key, f"duplicate key (also {seen[folded]!r}; Docker ignores case)")
        seen[folded] = key
    return dict(pairs)


def _no_constants(name: str):
    raise Refused("body", f"{name} is not JSON")


def decode_json(raw: bytes | str, what: str = "body") -> object:
    """JSON as strictly as the broker reads it; raises Refused."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constants)
    except Refused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise Refused(what, f"not valid JSON ({err.__class__.__name__})") from None


# --- typed reads: each raises Refused naming the field --------------------------------

def _obj(value, where: str, allowed: Iterable[str]) -> dict:
    if not isinstance(value, dict):
        raise Refused(where, "must be a JSON object")
    allowed = set(allowed)
    for key in value:
        if key not in allowed:
            raise Refused(f"{where}.{key}" if where else key, "not on the allow-list")
    return value


def _str(value, where: str, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str) or len(value) > MAX_STRING:
        raise Refused(where, f"must be a string of at most {MAX_STRING} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise Refused(where, f"{value!r} is not an allowed value")
    return value


def _int(value, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Refused(where, f"must be a whole number from {low} to {high}")
    return value


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise Refused(where, "must be true or false")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise Refused(where, f"must be a list of at most {MAX_ITEMS} items")
    return value


def _empty(value, where: str) -> None:
    if value not in (None, [], {}):
        raise Refused(where, "must be empty")


# --- the policy ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """The names and limits one project's hub may use, and the rules over them."""

    project: str
    images: frozenset[str]
    gpu_ids: frozenset[str] = frozenset()
    shared_dir: str = ""
    pids_limit: int = 1024
    # The parent cgroup every lab is made in (LABS_MEM_LIMIT); empty: labs have none.
    labs_cgroup_parent: str = ""
    # A lab's /tmp: the tmpfs options (LAB_TMP_SIZE); empty: none.
    tmp_options: str = ""
    # WORK_QUOTA in bytes (0: none): work volumes are then the broker's to make.
    work_quota: int = 0
    # LAB_DISK_LIMIT: bytes of each lab's writable layer (0: none).
    disk_limit: int = 0

    # --- names ---------------------------------------------------------------------
    @property
    def tmpfs(self) -> dict[str, str]:
        return {TMP_PATH: self.tmp_options} if self.tmp_options else {}

    @property
    def labs_network(self) -> str:
        return names.labs_network(self.project)

    def lab_suffix(self, name: str) -> str | None:
        """The escaped user of a lab container name, or None if it is not a lab's."""
        prefix = names.lab_container_prefix(self.project)
        suffix = name[len(prefix):] if name.startswith(prefix) else ""
        return suffix if _SUFFIX.fullmatch(suffix) else None

    def work_volume_suffix(self, name: str) -> str | None:
        prefix = names.work_volume_prefix(self.project)
        suffix = name[len(prefix):] if name.startswith(prefix) else ""
        return suffix if _SUFFIX.fullmatch(suffix) else None

    def allowed_binds(self, suffix: str) -> dict[str, str]:
        """The binds a lab may have, by where they are mounted."""
        binds = {names.WORK_MOUNT: f"{names.work_volume_prefix(self.project)}{suffix}:"
                                   f"{names.WORK_MOUNT}:rw"}
        if self.shared_dir:
            binds[names.SHARED_MOUNT] = f"{self.shared_dir}:{names.SHARED_MOUNT}:ro"
        return binds

    # --- routing ------------------------------------------------------------------------
    def plan(self, call: Call) -> Plan:
        """What to send Docker for ``call``; raises Refused for everything else."""
        if len(call.body) > MAX_BODY:
            raise Refused("body", f"larger than {MAX_BODY} bytes", status=413)
        raw_path, _, raw_query = call.target.partition("?")
        version, path = self._version(raw_path)
        query = _query(raw_query)
        method = call.method
        parts = path.split("/")[1:]
        if method not in ("GET", "HEAD", "POST", "DELETE"):
            raise Refused(method, "not a method gpuhub uses")
        if method in ("GET", "HEAD", "DELETE") or parts[-1] in ("start", "stop"):
            if call.body:
                raise Refused("body", f"{method} {path} takes no body")
        if method in ("GET", "HEAD") and path in ("/_ping", "/version"):
            self._params(query, {}, path)
            return Plan(method, version + path)
        if method == "GET" and path == "/containers/json":
            params = self._params(query, {"limit": _q_int(-1, 1000), "all": _q_bool,
                                          "size": _q_bool, "trunc_cmd": _q_bool,
                                          "filters": _q_filters}, path)
            return Plan(method, version + path + _encode(params), only_project=self.project)
        if method == "POST" and path == "/containers/create":
            params = self._params(query, {"name": _q_str}, path)
            if "name" not in params:
                raise Refused("name", "a lab is created with its name")
            body = self.rebuild_create(params["name"], decode_json(call.body))
            suffix = self.lab_suffix(params["name"]) or ""
            # WORK_QUOTA: the work volume this lab binds is made by the broker, never by
            # Docker's implicit create (which would make a plain one, with no quota).
            works = bool(self.work_quota) and \
                self.allowed_binds(suffix)[names.WORK_MOUNT] in body["HostConfig"]["Binds"]
            return Plan(method, version + path + _encode({"name": params["name"]}),
                        body=json.dumps(body, sort_keys=True).encode(),
                        work_folder=suffix if works else None, image=body["Image"])
        if len(parts) == 3 and parts[0] == "containers" and _REF.fullmatch(parts[1]):
            ref, action = parts[1], parts[2]
            if method == "GET" and action == "json":
                params = self._params(query, {"size": _q_bool}, path)
                return Plan(method, version + path + _encode(params), only_project=self.project,
                            lab=ref)
            if method == "POST" and action == "start":
                self._params(query, {}, path)
                return Plan(method, f"{version}/containers/{{id}}/start", lab=ref,
                            check_recorded=True)
            if method == "POST" and action == "stop":
                params = self._params(query, {"t": _q_int(0, STOP_TIMEOUT_MAX)}, path)
                return Plan(method, f"{version}/containers/{{id}}/stop" + _encode(params), lab=ref)
        if method == "DELETE" and len(parts) == 2 and parts[0] == "containers" \
                and _REF.fullmatch(parts[1]):
            params = self._params(query, {"v": _q_bool, "force": _q_bool, "link": _q_false},
                                  path)
            return Plan(method, f"{version}/containers/{{id}}" + _encode(params), lab=parts[1])
        if method == "GET" and len(parts) >= 3 and parts[0] == "images" and parts[-1] == "json":
            image = "/".join(parts[1:-1])
            if image not in self.images:
                raise Refused("image", f"{image!r} is not the lab image or a profile's image",
                              status=403)
            self._params(query, {}, path)
            return Plan(method, f"{version}/images/{quote(image, safe='/:@')}/json")
        if method in ("GET", "DELETE") and len(parts) == 2 and parts[0] == "volumes":
            volume_of = self.work_volume_suffix(parts[1])
            if volume_of is None:
                raise Refused("volume", f"{parts[1]!r} is not a work volume of {self.project}")
            params = self._params(query, {"force": _q_bool} if method == "DELETE" else {}, path)
            removes = volume_of if method == "DELETE" and self.work_quota else None
            return Plan(method, f"{version}/volumes/{parts[1]}" + _encode(params),
                        removes_work_folder=removes)
        if method == "GET" and not version and path == names.WORK_FOLDERS_PATH:
            self._params(query, {}, path)
            if not self.work_quota:
                raise Refused(path, "work folders have no quota (WORK_QUOTA=none)", status=404)
            return Plan(method, path, local="work-folders")
        raise Refused(f"{method} {path}", "not a call gpuhub makes")

    def _version(self, raw_path: str) -> tuple[str, str]:
        # Decoded once, then checked: every part of it is matched against a plain pattern
        # below, and the path Docker gets is built anew from those parts.
        try:
            path = unquote(raw_path, errors="strict")
        except UnicodeDecodeError:
            raise Refused("path", "not UTF-8") from None
        if not path.startswith("/") or any(ch in path for ch in "%\\;?#") or "//" in path \
                or any(p in (".", "..") for p in path.split("/")) or not path.isascii():
            raise Refused("path", "must be plain (no %, \\, ;, //, . or .. segments)")
        raw_path = path
        match = _VERSION.fullmatch(raw_path)
        if not match:
            return "", raw_path
        version = (int(match[1]), int(match[2]))
        if version < MIN_API:
            raise Refused("API version", f"{version[0]}.{version[1]} is older than "
                                         f"{MIN_API[0]}.{MIN_API[1]}")
        return f"/v{version[0]}.{version[1]}", match[3]

    @staticmethod
    def _params(query: dict[str, str], allowed: Mapping[str, Callable[[str, str], object]],
                path: str) -> dict:
        params = {}
        for key, raw in query.items():
            if key not in allowed:
                raise Refused(f"query {key!r}", f"not a parameter gpuhub sends to {path}")
            params[key] = allowed[key](raw, f"query {key!r}")
        return params

    # --- the create body ------------------------------------------------------------------
    def rebuild_create(self, name: str, body: object) -> dict:
        """A lab's create body, built from the checked values of ``body``."""
        suffix = self.lab_suffix(name)
        if suffix is None:
            raise Refused("name", f"{name!r} is not {names.lab_container_prefix(self.project)}"
                                  "<user>")
        body = _obj(body, "", ("Image", "Cmd", "Env", "Labels", "ExposedPorts", "Volumes",
                               "HostConfig", "Tty", "OpenStdin", "StdinOnce", "AttachStdin",
                               "AttachStdout", "AttachStderr", "NetworkDisabled"))
        image = _str(body.get("Image"), "Image", _IMAGE)
        if image not in self.images:
            raise Refused("Image", f"{image!r} is not the lab image or a profile's image")
        out: dict = {"Image": image}
        if body.get("Cmd") is not None:
            out["Cmd"] = [_str(a, "Cmd[]") for a in _list(body["Cmd"], "Cmd")]
        for flag in ("Tty", "OpenStdin", "StdinOnce", "AttachStdin", "NetworkDisabled"):
            if flag in body and _bool(body[flag], flag):
                raise Refused(flag, "must be false for a lab")
        for flag in ("AttachStdout", "AttachStderr"):
            if flag in body:
                out[flag] = _bool(body[flag], flag)
        ports = _obj(body.get("ExposedPorts") or {}, "ExposedPorts", body.get("ExposedPorts") or {})
        for port, value in ports.items():
            _str(port, "ExposedPorts", _PORT)
            _empty(value, f"ExposedPorts.{port}")
        if ports:
            out["ExposedPorts"] = {port: {} for port in ports}
        host = self._rebuild_host(suffix, body.get("HostConfig"))
        device_ids = host.get("DeviceRequests", [{}])[0].get("DeviceIDs", [])
        out["Labels"] = self._labels(suffix, body.get("Labels"), device_ids)
        out["Env"] = self._env(body.get("Env"), device_ids)
        volumes = _obj(body.get("Volumes") or {}, "Volumes", self.allowed_binds(suffix))
        for path, value in volumes.items():
            _empty(value, f"Volumes.{path}")
        if volumes:
            out["Volumes"] = {path: {} for path in volumes}
        out["HostConfig"] = host
        return out

    def _rebuild_host(self, suffix: str, host: object) -> dict:
        host = _obj(host if host is not None else {}, "HostConfig", (
            "NetworkMode", "Binds", "CapDrop", "SecurityOpt", "PidsLimit", "Memory",
            "CpuQuota", "CpuPeriod", "AutoRemove", "Links", "Mounts", "DeviceRequests",
            "LogConfig", "CgroupParent", "Tmpfs", "StorageOpt"))
        network = host.get("NetworkMode", self.labs_network)
        if network != self.labs_network:
            raise Refused("HostConfig.NetworkMode", f"{network!r} is not {self.labs_network!r}")
        allowed = self.allowed_binds(suffix)
        binds = [_str(b, "HostConfig.Binds[]") for b in _list(host.get("Binds") or [],
                                                               "HostConfig.Binds")]
        for bind in binds:
            if bind not in allowed.values():
                raise Refused("HostConfig.Binds", f"{bind!r} is neither this user's work "
                                                  "volume nor the shared folder (read-only)")
        if len(set(binds)) != len(binds):
            raise Refused("HostConfig.Binds", "the same bind twice")
        drop = [_str(c, "HostConfig.CapDrop[]") for c in _list(host.get("CapDrop") or ["ALL"],
                                                                "HostConfig.CapDrop")]
        if drop != ["ALL"]:
            raise Refused("HostConfig.CapDrop", 'a lab drops ["ALL"] capabilities')
        options = _list(host.get("SecurityOpt") or ["no-new-privileges"], "HostConfig.SecurityOpt")
        if any(o not in ("no-new-privileges", "no-new-privileges:true") for o in options):
            raise Refused("HostConfig.SecurityOpt", 'a lab has only "no-new-privileges"')
        _empty(host.get("Links"), "HostConfig.Links")
        _empty(host.get("Mounts"), "HostConfig.Mounts")
        parent = host.get("CgroupParent") or ""
        if parent != self.labs_cgroup_parent and (parent or not self.labs_cgroup_parent):
            raise Refused("HostConfig.CgroupParent", f"a lab's parent cgroup is "
                                                     f"{self.labs_cgroup_parent or 'none'}")
        tmpfs = _obj(host.get("Tmpfs") or {}, "HostConfig.Tmpfs", (TMP_PATH,))
        if tmpfs and tmpfs != self.tmpfs:
            raise Refused("HostConfig.Tmpfs", f"a lab's tmpfs is {self.tmpfs or 'none'} "
                                              "(LAB_TMP_SIZE), nothing else")
        storage = _obj(host.get("StorageOpt") or {}, "HostConfig.StorageOpt", ("size",))
        if storage and storage != storage_opt(self.disk_limit):
            raise Refused("HostConfig.StorageOpt", "a lab's writable layer is "
                                                   f"{storage_opt(self.disk_limit) or 'unbounded'}"
                                                   " (LAB_DISK_LIMIT), nothing else")
        if host.get("LogConfig") is not None:
            log = _obj(host["LogConfig"], "HostConfig.LogConfig", ("Type", "Config"))
            if log != LOG_CONFIG:
                raise Refused("HostConfig.LogConfig", f"a lab's log is {LOG_CONFIG} (rotated, "
                                                      "capped), nothing else")
        out: dict = {
            "NetworkMode": self.labs_network,
            "Binds": binds,
            "CapDrop": ["ALL"],
            "CapAdd": None,
            "SecurityOpt": ["no-new-privileges"],
            "Privileged": False,
            "PidsLimit": _int(host.get("PidsLimit", self.pids_limit), "HostConfig.PidsLimit",
                              1, self.pids_limit),
            "RestartPolicy": {"Name": "no"},
            # Always, whatever the hub sent: a lab's log cannot fill Docker's disk.
            "LogConfig": copy.deepcopy(LOG_CONFIG),
        }
        if self.labs_cgroup_parent:  # always: labs together stay under LABS_MEM_LIMIT
            out["CgroupParent"] = self.labs_cgroup_parent
        if self.tmpfs:  # always: a lab's /tmp is bounded (LAB_TMP_SIZE)
            out["Tmpfs"] = dict(self.tmpfs)
        if self.disk_limit:  # always: a lab's writable layer is bounded (LAB_DISK_LIMIT)
            out["StorageOpt"] = storage_opt(self.disk_limit)
        if "AutoRemove" in host:
            out["AutoRemove"] = _bool(host["AutoRemove"], "HostConfig.AutoRemove")
        if "Memory" in host:
            out["Memory"] = _int(host["Memory"], "HostConfig.Memory", 0, 2 ** 50)
        if "CpuPeriod" in host or "CpuQuota" in host:
            out["CpuPeriod"] = _int(host.get("CpuPeriod", 100_000), "HostConfig.CpuPeriod",
                                    1000, 1_000_000)
            out["CpuQuota"] = _int(host.get("CpuQuota", 0), "HostConfig.CpuQuota", 0, 2 ** 40)
        requests = _list(host.get("DeviceRequests") or [], "HostConfig.DeviceRequests")
        if len(requests) > 1:
            raise Refused("HostConfig.DeviceRequests", "at most one (the lab's GPUs)")
        if requests:
            out["DeviceRequests"] = [self._gpu_request(requests[0])]
        return out

    def _gpu_request(self, request: object) -> dict:
        where = "HostConfig.DeviceRequests[0]"
        request = _obj(request, where, ("Driver", "Count", "DeviceIDs", "Capabilities", "Options"))
        if request.get("Driver", "nvidia") not in ("nvidia", ""):
            raise Refused(f"{where}.Driver", "only the nvidia driver")
        if request.get("Count", 0) != 0 or isinstance(request.get("Count", 0), bool):
            raise Refused(f"{where}.Count", "must be 0: GPUs are given by their device IDs")
        ids = [_str(d, f"{where}.DeviceIDs[]") for d in _list(request.get("DeviceIDs"),
                                                              f"{where}.DeviceIDs")]
        if not ids or len(set(ids)) != len(ids):
            raise Refused(f"{where}.DeviceIDs", "one or more distinct device IDs")
        unknown = [d for d in ids if d not in self.gpu_ids]
        if unknown:
            raise Refused(f"{where}.DeviceIDs", f"{unknown} not in the GPU inventory")
        if request.get("Capabilities", [["gpu"]]) != [["gpu"]]:
            raise Refused(f"{where}.Capabilities", 'must be [["gpu"]]')
        _empty(request.get("Options"), f"{where}.Options")
        return {"Driver": "nvidia", "Count": 0, "DeviceIDs": ids, "Capabilities": [["gpu"]],
                "Options": {}}

    def _labels(self, suffix: str, labels: object, device_ids: list[str]) -> dict[str, str]:
        labels = _obj(labels, "Labels", names.LAB_LABELS)
        for key, value in labels.items():
            _str(value, f"Labels.{key}")
        if labels.get(LABEL_PROJECT) != self.project:
            raise Refused(f"Labels.{LABEL_PROJECT}", f"must be {self.project!r}")
        user = _str(labels.get(LABEL_USER), f"Labels.{LABEL_USER}", _USER)
        if names.escape_user(user) != suffix:
            raise Refused(f"Labels.{LABEL_USER}", f"{user!r} is not the user of this lab's name")
        if labels.get(LABEL_GPUS, "") != ",".join(device_ids):
            raise Refused(f"Labels.{LABEL_GPUS}", "must name exactly the GPUs requested")
        if LABEL_SINCE in labels:
            _str(labels[LABEL_SINCE], f"Labels.{LABEL_SINCE}", _SINCE)
        if LABEL_PROFILE in labels:
            _str(labels[LABEL_PROFILE], f"Labels.{LABEL_PROFILE}", _SLUG)
        return {**labels, LABEL_GPUS: ",".join(device_ids)}

    @staticmethod
    def _env(env: object, device_ids: list[str]) -> list[str]:
        out: dict[str, str] = {}
        for item in _list(env or [], "Env"):
            key, sep, value = _str(item, "Env[]").partition("=")
            if not sep or not _ENV_KEY.fullmatch(key):
                raise Refused("Env[]", f"{item[:40]!r} is not NAME=value")
            if key in out:
                raise Refused(f"Env.{key}", "set twice")
            out[key] = value
        visible = ",".join(device_ids) or "void"
        for key, value in out.items():
            if key == "NVIDIA_VISIBLE_DEVICES" and value != visible:
                raise Refused(f"Env.{key}", f"must be {visible!r}: exactly the GPUs requested")
            if key == "NVIDIA_DRIVER_CAPABILITIES" and \
                    not set(value.split(",")) <= NVIDIA_CAPABILITIES:
                raise Refused(f"Env.{key}", f"only {sorted(NVIDIA_CAPABILITIES)}")
            if key.startswith("NVIDIA_") and key not in ("NVIDIA_VISIBLE_DEVICES",
                                                         "NVIDIA_DRIVER_CAPABILITIES"):
                raise Refused(f"Env.{key}", "not an NVIDIA setting labs may change")
        # Never left to the image: CUDA images say "all", which on a host whose default
        # runtime is nvidia would expose every GPU.
        out["NVIDIA_VISIBLE_DEVICES"] = visible
        out.setdefault("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
        return [f"{k}={v}" for k, v in out.items()]

    # --- what Docker recorded -------------------------------------------------------------
    def is_project_container(self, summary: Mapping) -> bool:
        """A container of this project (a lab, or a compose service of the stack)."""
        labels = summary.get("Labels") or (summary.get("Config") or {}).get("Labels") or {}
        return labels.get(LABEL_PROJECT) == self.project or \
            labels.get(names.COMPOSE_PROJECT_LABEL) == self.project

    def lab_of(self, info: Mapping) -> str | None:
        """The escaped user of an inspected container if it is one of this project's labs."""
        labels = (info.get("Config") or {}).get("Labels") or {}
        suffix = self.lab_suffix(str(info.get("Name", "")).lstrip("/"))
        if suffix is None or labels.get(LABEL_PROJECT) != self.project \
                or names.COMPOSE_PROJECT_LABEL in labels:
            return None
        return suffix

    def hardening_problems(self, info: Mapping) -> list[str]:
        """What in an inspected lab breaks the hardening (empty when nothing does)."""
        suffix = self.lab_of(info)
        if suffix is None:
            return ["not a lab of this project"]
        host = info.get("HostConfig") or {}
        problems = []
        if host.get("Privileged"):
            problems.append("privileged")
        if host.get("CapAdd"):
            problems.append(f"added capabilities {host['CapAdd']}")
        if "ALL" not in (host.get("CapDrop") or []):
            problems.append("capabilities not dropped")
        options = host.get("SecurityOpt") or []
        if not any(o.startswith("no-new-privileges") for o in options) or \
                any("unconfined" in o or o.startswith(("seccomp", "apparmor", "label"))
                    for o in options):
            problems.append(f"security options {options}")
        for key in _HOST_NAMESPACES:
            if host.get(key) not in (None, "", "private", "shareable"):
                problems.append(f"{key}={host[key]!r}")
        if host.get("NetworkMode") != self.labs_network:
            problems.append(f"network {host.get('NetworkMode')!r}")
        allowed = set(self.allowed_binds(suffix).values())
        if not set(host.get("Binds") or []) <= allowed:
            problems.append(f"binds {host.get('Binds')}")
        for key in ("Devices", "DeviceCgroupRules", "VolumesFrom", "Mounts", "Links"):
            if host.get(key):
                problems.append(f"{key} {host[key]}")
        if host.get("PortBindings") or host.get("PublishAllPorts"):
            problems.append("published ports")
        if host.get("Sysctls"):
            problems.append("sysctls")
        if (host.get("CgroupParent") or "") != self.labs_cgroup_parent:
            problems.append(f"cgroup parent {host.get('CgroupParent')!r}")
        if (host.get("Tmpfs") or {}) != self.tmpfs:
            problems.append(f"tmpfs {host.get('Tmpfs')!r}")
        if (host.get("StorageOpt") or {}) != storage_opt(self.disk_limit):
            problems.append(f"storage options {host.get('StorageOpt')!r}")
        if not 0 < (host.get("PidsLimit") or 0) <= self.pids_limit:
            problems.append(f"PidsLimit {host.get('PidsLimit')}")
        for request in host.get("DeviceRequests") or []:
            if request.get("Count") or not set(request.get("DeviceIDs") or []) <= self.gpu_ids:
                problems.append(f"device request {request}")
        for mount in info.get("Mounts") or []:
            if mount.get("Type") == "bind" and mount.get("Source") != self.shared_dir:
                problems.append(f"bind mount of {mount.get('Source')!r}")
        return problems


# --- query strings ---------------------------------------------------------------------

def _query(raw: str) -> dict[str, str]:
    if not raw:
        return {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True,
                          encoding="utf-8", errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise Refused("query", "not a valid query string") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise Refused(f"query {key!r}", "given twice")
        query[key] = value
    return query


def _encode(params: Mapping[str, object]) -> str:
    return "?" + urlencode(params) if params else ""


def _q_str(raw: str, where: str) -> str:
    return _str(raw, where)


def _q_bool(raw: str, where: str) -> str:
    if raw in _TRUE:
        return "1"
    if raw in _FALSE:
        return "0"
    raise Refused(where, "must be 0, 1, true or false")


def _q_false(raw: str, where: str) -> str:
    if _q_bool(raw, where) != "0":
        raise Refused(where, "must be false")
    return "0"


def _q_int(low: int, high: int):
    def parse(raw: str, where: str) -> str:
        if not re.fullmatch(r"-?[0-9]{1,7}", raw):
            raise Refused(where, f"must be a whole number from {low} to {high}")
        return str(_int(int(raw), where, low, high))
    return parse


_FILTER_KEYS = {"label": re.compile(r"[A-Za-z0-9_.=:/-]{1,255}"),
                "health": re.compile(r"healthy|unhealthy|starting|none"),
                "status": re.compile(r"created|restarting|running|removing|paused|exited|dead"),
                "name": re.compile(r"[A-Za-z0-9_.-]{1,255}"),
                "id": re.compile(r"[a-f0-9]{1,64}")}


def _q_filters(raw: str, where: str) -> str:
    filters = _obj(decode_json(raw, where), where, _FILTER_KEYS)
    rebuilt = {}
    for key, values in filters.items():
        # Docker takes a list, or a map of value -> true.
        if isinstance(values, dict):
            if any(v is not True for v in values.values()):
                raise Refused(f"{where}.{key}", "map values must be true")
            values = list(values)
        rebuilt[key] = [_str(v, f"{where}.{key}[]", _FILTER_KEYS[key])
                        for v in _list(values, f"{where}.{key}")]
    return json.dumps(rebuilt, sort_keys=True)
