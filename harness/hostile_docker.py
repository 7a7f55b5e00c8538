"""Hostile Docker API requests, one per way through a filter that matches bytes.

Used twice: by the broker's unit tests against a recording fake daemon, and by the
integration test from inside a real hub against the real daemon. Each request differs
from what gpuhub itself sends (``gpuhub_create``) in the one way its name says.
"""

from __future__ import annotations

import copy
import json


def gpuhub_create(project: str, image: str, gpu: str, shared: str) -> dict:
    """What DockerSpawner (through docker-py) sends for bob's 1-GPU lab, as recorded."""
    return {
        "ExposedPorts": {"8888/tcp": None}, "Tty": False, "OpenStdin": False,
        "StdinOnce": False, "AttachStdin": False, "AttachStdout": True, "AttachStderr": True,
        "Env": ["JUPYTERHUB_API_TOKEN=abc", f"NVIDIA_VISIBLE_DEVICES={gpu}",
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility", f"GPUHUB_GPUS={gpu}"],
        "Cmd": ["gpuhub-singleuser"], "Image": image,
        "Volumes": {"/home/jovyan/work": {}, **({"/home/jovyan/shared": {}} if shared else {})},
        "NetworkDisabled": False,
        "HostConfig": {
            "Memory": 1 << 30, "NetworkMode": f"{project}-labs", "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Binds": [f"{project}-home-bob:/home/jovyan/work:rw",
                      *([f"{shared}:/home/jovyan/shared:ro"] if shared else [])],
            "Links": [], "CpuQuota": 200000, "CpuPeriod": 100000, "PidsLimit": 1024,
            "AutoRemove": True, "Mounts": [],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
            "DeviceRequests": [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [gpu],
                                "Capabilities": [["gpu"]], "Options": {}}]},
        "Labels": {"gpuhub.project": project, "gpuhub.user": "bob", "gpuhub.gpus": gpu,
                   "gpuhub.since": "2026-12-01T10:00:00+00:00", "gpuhub.profile": "gpu1"},
    }


class Variants:
    """Changed copies of one create body (gpuhub's own), for the cases built from it."""

    def __init__(self, create: dict):
        self.create = create

    def body(self, **top) -> dict:
        """The body with top-level fields changed (None removes one)."""
        out = copy.deepcopy(self.create)
        for key, value in top.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def host(self, **fields) -> dict:
        """The body with HostConfig fields changed."""
        out = self.body()
        out["HostConfig"].update(fields)
        return out

    def labels(self, **fields) -> dict:
        """The body with labels changed (``gpuhub_user`` is the label gpuhub.user)."""
        out = self.body()
        out["Labels"].update({k.replace("_", "."): v for k, v in fields.items()})
        return out

    def raw_host(self, text: str) -> str:
        """The body as text with ``text`` spliced in as the first HostConfig entry."""
        encoded = json.dumps(self.create)
        return encoded.replace('"HostConfig": {', '"HostConfig": {' + text + ", ", 1)


def hostile_requests(project: str, image: str, gpu: str, shared: str = "/srv/shared-data",
                     hub: str = "hub", firewall: str = "lab-firewall",
                     other: str = "elsewhere") -> list[tuple[str, str, str, object]]:
    """(case, method, target, body) for each hostile request; none may change anything.

    ``hub``, ``firewall`` and ``other`` name containers that are not labs: the hub, the
    lab firewall and a container of another project.
    """
    PROJECT, LAB_IMAGE, SHARED, GPUS = project, image, shared or "/srv/shared-data", (gpu,)
    GPUHUB_CREATE = gpuhub_create(project, image, gpu, shared)
    LAB = f"{PROJECT}-lab-bob"
    CREATE = f"/v1.41/containers/create?name={LAB}"

    variant = Variants(GPUHUB_CREATE)
    body, host, labels, raw_host = variant.body, variant.host, variant.labels, variant.raw_host
    GPU_REQUEST = GPUHUB_CREATE["HostConfig"]["DeviceRequests"][0]

    # (case, method, target, body): every one must be refused, and nothing may change.
    return [
        # --- bytes a filter never looked at ------------------------------------------------
        ("a second JSON document after the body", "POST", CREATE,
         json.dumps(GPUHUB_CREATE) + ' {"HostConfig": {"Privileged": true}}'),
        ("trailing bytes after the body", "POST", CREATE, json.dumps(GPUHUB_CREATE) + "\x00garbage"),
        ("privileged after 60 KiB of padding", "POST", CREATE,
         json.dumps(body(Env=["PAD=" + "x" * 61000])).replace(
             '"HostConfig": {', '"HostConfig": {"Privileged": true, ', 1)),
        ("a body over the size limit", "POST", CREATE, "{" + " " * 70000 + "}"),
        # --- a check that errors out -----------------------------------------------------
        ("not UTF-8", "POST", CREATE, json.dumps(GPUHUB_CREATE).encode() + b'\xff'),
        ("UTF-16", "POST", CREATE, json.dumps(host(Privileged=True)).encode("utf-16")),
        ("nested 100000 deep", "POST", CREATE, "[" * 100000 + "]" * 100000),
        ("NaN in the PIDs limit", "POST", CREATE, raw_host('"PidsLimit": NaN')),
        ("1e400 as the PIDs limit", "POST", CREATE, raw_host('"PidsLimit": 1e400')),
        ("not JSON at all", "POST", CREATE, "Privileged=true"),
        ("an empty create body", "POST", CREATE, ""),
        ("a JSON list as the body", "POST", CREATE, "[]"),
        # --- the same field in another shape ---------------------------------------------
        ("\\u-escaped key", "POST", CREATE, raw_host('"Privil\\u0065ged": true')),
        ("key in lower case", "POST", CREATE, raw_host('"privileged": true')),
        ("HostConfig key in another case", "POST", CREATE,
         json.dumps(GPUHUB_CREATE).replace('"HostConfig"', '"hostconfig"')),
        ("duplicate key, last wins in Docker", "POST", CREATE,
         raw_host(f'"NetworkMode": "host", "NetworkMode": "{PROJECT}-labs"')),
        ("duplicate key in another case", "POST", CREATE, raw_host('"networkmode": "host"')),
        ("duplicate HostConfig", "POST", CREATE,
         json.dumps(GPUHUB_CREATE)[:-1] + ', "HostConfig": {"Privileged": true}}'),
        ("Kelvin sign in a key (Go folds it to k)", "POST", CREATE,
         raw_host('"Lin\u212as": ["x:y"]')),
        ("long s in a key (Go folds it to s)", "POST", CREATE,
         raw_host('"Privileged": false, "Device\u017fFrom": 1')),
        ("Binds as a bare string", "POST", CREATE, json.dumps(host(Binds="/:/host"))),
        ("CapAdd as a bare string", "POST", CREATE, json.dumps(host(CapAdd="ALL"))),
        ("SecurityOpt as a bare string", "POST", CREATE,
         json.dumps(host(SecurityOpt="seccomp=unconfined"))),
        ("PIDs limit as a string", "POST", CREATE, json.dumps(host(PidsLimit="1024"))),
        ("AutoRemove as a number", "POST", CREATE, json.dumps(host(AutoRemove=1))),
        # --- a pattern that stops early inside a string ----------------------------------
        ("privileged after a quote-heavy label value", "POST", CREATE,
         raw_host('"Privileged": true').replace('"gpuhub.profile": "gpu1"',
                                                '"gpuhub.profile": "\\"]} \\\\"')),
        ("host network after a string holding a bracket", "POST", CREATE,
         json.dumps(body(Cmd=['"]}', "x"])).replace(f'"{PROJECT}-labs"', '"host"')),
        # --- query strings and versions ------------------------------------------------------
        ("name given twice", "POST", CREATE + "&name=gpuhub-hub-1", GPUHUB_CREATE),
        ("a name outside the project", "POST", "/v1.41/containers/create?name=evil", GPUHUB_CREATE),
        ("a lab name of another user than the labels", "POST",
         f"/v1.41/containers/create?name={PROJECT}-lab-carol", GPUHUB_CREATE),
        ("create without a name", "POST", "/v1.41/containers/create", GPUHUB_CREATE),
        ("an unknown create parameter", "POST", CREATE + "&platform=linux", GPUHUB_CREATE),
        ("old API: HostConfig on start", "POST", f"/v1.23/containers/{hub}/start",
         {"Privileged": True}),
        ("old API written with leading zeros", "POST", "/v01.023/containers/gpuhub-lab-bob/start",
         {"Privileged": True}),
        ("a body on start", "POST", f"/v1.41/containers/{LAB}/start", {"Privileged": True}),
        ("stop with a timeout given twice", "POST", f"/v1.41/containers/{LAB}/stop?t=1&t=2", None),
        ("a double slash", "POST", "/v1.41//containers/create?name=" + LAB, GPUHUB_CREATE),
        ("a dot-dot segment", "POST", f"/v1.41/containers/{LAB}/../{hub}/start", None),
        ("an encoded slash", "POST", f"/v1.41/containers/{LAB}%2Fexec", {"Cmd": ["id"]}),
        ("an encoded dot-dot", "GET", "/v1.41/containers/%2e%2e/info", None),
        ("list filters given twice", "GET",
         '/v1.41/containers/json?filters={"label":["a"]}&filters={"label":["b"]}', None),
        ("a semicolon as separator", "POST", CREATE + ";name=gpuhub-hub-1", GPUHUB_CREATE),
        ("delete with link=true", "DELETE", f"/v1.41/containers/{LAB}?link=True", None),
        # --- fields a deny-list never checked -----------------------------------------------
        ("privileged", "POST", CREATE, json.dumps(host(Privileged=True))),
        ("privileged: false is still not gpuhub's", "POST", CREATE, json.dumps(host(Privileged=False))),
        ("CapAdd ALL", "POST", CREATE, json.dumps(host(CapAdd=["ALL"]))),
        ("CapAdd DAC_READ_SEARCH", "POST", CREATE, json.dumps(host(CapAdd=["DAC_READ_SEARCH"]))),
        ("capabilities not dropped", "POST", CREATE, json.dumps(host(CapDrop=["NET_RAW"]))),
        ("host bind /:/host", "POST", CREATE,
         json.dumps(host(Binds=[f"{PROJECT}-home-bob:/home/jovyan/work:rw", "/:/host"]))),
        ("the Docker socket", "POST", CREATE,
         json.dumps(host(Binds=["/var/run/docker.sock:/var/run/docker.sock"]))),
        ("another user's work volume", "POST", CREATE,
         json.dumps(host(Binds=[f"{PROJECT}-home-carol:/home/jovyan/work:rw"]))),
        ("another project's volume", "POST", CREATE,
         json.dumps(host(Binds=["other-home-bob:/home/jovyan/work:rw"]))),
        ("the broker's own volume (its GPU inventory)", "POST", CREATE,
         json.dumps(host(Binds=[f"{PROJECT}_broker-data:/home/jovyan/work:rw"]))),
        ("the shared folder writable", "POST", CREATE,
         json.dumps(host(Binds=[f"{SHARED}:/home/jovyan/shared:rw"]))),
        ("a bind mount through Mounts", "POST", CREATE,
         json.dumps(host(Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"}]))),
        ("volumes from the hub", "POST", CREATE, json.dumps(host(VolumesFrom=[hub]))),
        ("a volume driver", "POST", CREATE, json.dumps(host(VolumeDriver="local"))),
        ("host network", "POST", CREATE, json.dumps(host(NetworkMode="host"))),
        ("Docker's default bridge", "POST", CREATE, json.dumps(host(NetworkMode="bridge"))),
        ("the hub's network namespace", "POST", CREATE, json.dumps(host(NetworkMode=f"container:{hub}"))),
        ("another network by NetworkingConfig", "POST", CREATE,
         json.dumps(body(NetworkingConfig={"EndpointsConfig": {"bridge": {}}}))),
        ("host PID namespace", "POST", CREATE, json.dumps(host(PidMode="host"))),
        ("the hub's PID namespace", "POST", CREATE, json.dumps(host(PidMode=f"container:{hub}"))),
        ("host IPC namespace", "POST", CREATE, json.dumps(host(IpcMode="host"))),
        ("host UTS namespace", "POST", CREATE, json.dumps(host(UTSMode="host"))),
        ("host user namespace", "POST", CREATE, json.dumps(host(UsernsMode="host"))),
        ("host cgroup namespace", "POST", CREATE, json.dumps(host(CgroupnsMode="host"))),
        ("seccomp unconfined", "POST", CREATE,
         json.dumps(host(SecurityOpt=["no-new-privileges", "seccomp=unconfined"]))),
        ("apparmor unconfined", "POST", CREATE, json.dumps(host(SecurityOpt=["apparmor=unconfined"]))),
        ("SELinux labels off", "POST", CREATE, json.dumps(host(SecurityOpt=["label=disable"]))),
        # --- a log that fills the disk, or goes elsewhere ----------------------------------
        ("a log without a size cap", "POST", CREATE,
         json.dumps(host(LogConfig={"Type": "json-file", "Config": {}}))),
        ("a log of 100 GB", "POST", CREATE, json.dumps(host(LogConfig={
            "Type": "json-file", "Config": {"max-size": "100g", "max-file": "1"}}))),
        ("a log sent to a syslog server", "POST", CREATE, json.dumps(host(LogConfig={
            "Type": "syslog", "Config": {"syslog-address": "udp://127.0.0.1:514"}}))),
        ("unmasked /proc", "POST", CREATE, json.dumps(host(MaskedPaths=[]))),
        ("writable /proc/sys", "POST", CREATE, json.dumps(host(ReadonlyPaths=[]))),
        ("sysctls", "POST", CREATE, json.dumps(host(Sysctls={"net.ipv4.ip_forward": "1"}))),
        # --- outside the labs' memory limit (their parent cgroup) -----------------------
        ("the root cgroup as parent", "POST", CREATE, json.dumps(host(CgroupParent="/"))),
        ("Docker's own cgroup as parent", "POST", CREATE,
         json.dumps(host(CgroupParent="/docker"))),
        ("a systemd slice as parent", "POST", CREATE,
         json.dumps(host(CgroupParent="system.slice"))),
        ("a device", "POST", CREATE,
         json.dumps(host(Devices=[{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda",
                                   "CgroupPermissions": "rwm"}]))),
        ("device cgroup rules", "POST", CREATE, json.dumps(host(DeviceCgroupRules=["b *:* rwm"]))),
        ("every GPU (Count -1)", "POST", CREATE,
         json.dumps(host(DeviceRequests=[{**GPU_REQUEST, "Count": -1, "DeviceIDs": []}]))),
        ("a GPU not in the inventory", "POST", CREATE,
         json.dumps(host(DeviceRequests=[{**GPU_REQUEST, "DeviceIDs": ["GPU-zzzz"]}]))),
        ("GPU display capabilities", "POST", CREATE,
         json.dumps(host(DeviceRequests=[{**GPU_REQUEST, "Capabilities": [["gpu", "display"]]}]))),
        ("another device driver", "POST", CREATE,
         json.dumps(host(DeviceRequests=[{**GPU_REQUEST, "Driver": "cdi"}]))),
        ("GPU labels that hide the grant", "POST", CREATE, json.dumps(labels(gpuhub_gpus=""))),
        ("every GPU through NVIDIA_VISIBLE_DEVICES", "POST", CREATE,
         json.dumps(body(Env=["NVIDIA_VISIBLE_DEVICES=all"]))),
        ("all driver capabilities", "POST", CREATE,
         json.dumps(body(Env=[f"NVIDIA_VISIBLE_DEVICES={GPUS[0]}",
                              "NVIDIA_DRIVER_CAPABILITIES=all"]))),
        ("MIG configuration rights", "POST", CREATE,
         json.dumps(body(Env=[f"NVIDIA_VISIBLE_DEVICES={GPUS[0]}",
                              "NVIDIA_MIG_CONFIG_DEVICES=all"]))),
        ("an environment variable set twice", "POST", CREATE,
         json.dumps(body(Env=["NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_VISIBLE_DEVICES=all"]))),
        ("a published port", "POST", CREATE,
         json.dumps(host(PortBindings={"8888/tcp": [{"HostPort": "18888"}]}))),
        ("all ports published", "POST", CREATE, json.dumps(host(PublishAllPorts=True))),
        ("links", "POST", CREATE, json.dumps(host(Links=["hub:hub"]))),
        ("a logging driver that dials out", "POST", CREATE,
         json.dumps(host(LogConfig={"Type": "syslog",
                                    "Config": {"syslog-address": "tcp://192.0.2.1:514"}}))),
        ("restart always", "POST", CREATE, json.dumps(host(RestartPolicy={"Name": "always"}))),
        ("OOM score", "POST", CREATE, json.dumps(host(OomScoreAdj=-1000))),
        ("OOM killer off", "POST", CREATE, json.dumps(host(OomKillDisable=True))),
        ("ulimits", "POST", CREATE,
         json.dumps(host(Ulimits=[{"Name": "nofile", "Soft": 1 << 20, "Hard": 1 << 20}]))),
        ("no PIDs limit", "POST", CREATE, json.dumps(host(PidsLimit=-1))),
        ("a PIDs limit over the setting", "POST", CREATE, json.dumps(host(PidsLimit=10 ** 6))),
        ("a runtime", "POST", CREATE, json.dumps(host(Runtime="runc-unsafe"))),
        ("a cgroup parent", "POST", CREATE, json.dumps(host(CgroupParent="/"))),
        ("tmpfs", "POST", CREATE, json.dumps(host(Tmpfs={"/run": "exec"}))),
        # --- disk a lab could fill past its bounds (LAB_TMP_SIZE, WORK_QUOTA) --------------
        ("a /tmp of its own size", "POST", CREATE,
         json.dumps(host(Tmpfs={"/tmp": "rw,exec,size=100g,mode=1777"}))),
        ("a writable layer of its own size", "POST", CREATE,
         json.dumps(host(StorageOpt={"size": "1T"}))),
        ("a volume made by the hub", "POST", "/v1.41/volumes/create",
         json.dumps({"Name": f"{project}-home-bob", "Driver": "local", "DriverOpts": {
             "type": "none", "o": "bind", "device": "/"}})),
        ("the work-folder report under an API version", "GET",
         "/v1.41/gpuhub/work-folders", ""),
        ("a work-folder report with a query", "GET", "/gpuhub/work-folders?all=1", ""),
        ("extra hosts", "POST", CREATE, json.dumps(host(ExtraHosts=["hub:192.0.2.1"]))),
        ("DNS servers", "POST", CREATE, json.dumps(host(Dns=["192.0.2.1"]))),
        ("a stop signal", "POST", CREATE, json.dumps(body(StopSignal="SIGKILL"))),
        ("a health check", "POST", CREATE, json.dumps(body(Healthcheck={"Test": ["CMD", "x"]}))),
        ("run as root", "POST", CREATE, json.dumps(body(User="root"))),
        ("another entrypoint", "POST", CREATE, json.dumps(body(Entrypoint=["/bin/sh"]))),
        ("an image not on the list", "POST", CREATE, json.dumps(body(Image="busybox:latest"))),
        ("no image", "POST", CREATE, json.dumps(body(Image=None))),
        ("a TTY", "POST", CREATE, json.dumps(body(Tty=True))),
        ("a compose service's labels", "POST", CREATE,
         json.dumps(labels(com_docker_compose_project=PROJECT))),
        ("labels of another project", "POST", CREATE, json.dumps(labels(gpuhub_project="other"))),
        ("a user label that is not the name's", "POST", CREATE, json.dumps(labels(gpuhub_user="carol"))),
        ("an anonymous volume elsewhere", "POST", CREATE, json.dumps(body(Volumes={"/etc": {}}))),
        # --- calls gpuhub never makes, and containers that are not labs ---------------------
        ("start the hub", "POST", f"/v1.41/containers/{hub}/start", None),
        ("start a container named like a lab but privileged", "POST",
         f"/v1.41/containers/{PROJECT}-lab-evil/start", None),
        ("stop lab-firewall", "POST", f"/v1.41/containers/{firewall}/stop?t=0", None),
        ("remove lab-firewall", "DELETE", f"/v1.41/containers/{firewall}?force=True", None),
        ("remove another project's container", "DELETE", f"/v1.41/containers/{other}", None),
        ("inspect the hub (its environment)", "GET", f"/v1.41/containers/{hub}/json", None),
        ("exec", "POST", f"/v1.41/containers/{LAB}/exec", {"Cmd": ["id"]}),
        ("archive", "GET", f"/v1.41/containers/{LAB}/archive?path=/etc", None),
        ("put an archive", "PUT", f"/v1.41/containers/{LAB}/archive?path=/", b"x"),
        ("logs", "GET", f"/v1.41/containers/{hub}/logs?stdout=1", None),
        ("kill", "POST", f"/v1.41/containers/{hub}/kill?signal=SIGKILL", None),
        ("update", "POST", f"/v1.41/containers/{LAB}/update", {"Memory": 0}),
        ("rename", "POST", f"/v1.41/containers/{hub}/rename?name=x", None),
        ("commit", "POST", f"/v1.41/commit?container={hub}", None),
        ("image pull", "POST", "/v1.41/images/create?fromImage=busybox", None),
        ("image remove", "DELETE", f"/v1.41/images/{LAB_IMAGE}", None),
        ("inspect an image not on the list", "GET", "/v1.41/images/busybox/json", None),
        ("build", "POST", "/v1.41/build", b""),
        ("volume create", "POST", "/v1.41/volumes/create", {"Name": "x"}),
        ("volume list", "GET", "/v1.41/volumes", None),
        ("remove another project's volume", "DELETE", "/v1.41/volumes/other-home-bob", None),
        ("remove the hub's volume", "DELETE", f"/v1.41/volumes/{PROJECT}_hub-data", None),
        ("remove the broker's volume", "DELETE", f"/v1.41/volumes/{PROJECT}_broker-data", None),
        ("network connect", "POST", f"/v1.41/networks/{PROJECT}-labs/connect", {"Container": hub}),
        ("swarm init", "POST", "/v1.41/swarm/init", {"ListenAddr": "127.0.0.1:2377"}),
        ("system info", "GET", "/v1.41/info", None),
        ("secrets", "GET", "/v1.41/secrets", None),
        ("plugins", "GET", "/v1.41/plugins", None),
        ("events", "GET", "/v1.41/events", None),
        ("a method gpuhub never uses", "PATCH", "/v1.41/containers/json", None),
        ("OPTIONS", "OPTIONS", "/v1.41/_ping", None),
    ]


