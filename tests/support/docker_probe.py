"""Calls through the Docker broker, run inside the hub container: the attacker's position.

``docker exec -i HUB python3 - CASES.json < docker_probe.py`` prints one JSON object:
``{case: [HTTP status, message]}``. Cases named ``allowed:*`` are what gpuhub itself does
(through docker-py, as DockerSpawner does); the others come from CASES.json (see
support/hostile_docker.py), each sent byte for byte as written there. Nothing is cleaned
up here: the test looks at what the daemon recorded, from the host, and then removes it.
"""

import base64
import http.client
import json
import os
import sys

import docker

spec = json.load(open(sys.argv[1]))
project, lab_image, gpu = spec["project"], spec["lab_image"], spec["gpu"]
api = docker.APIClient(base_url=os.environ["DOCKER_HOST"], version="auto")
host, port = os.environ["DOCKER_HOST"].removeprefix("tcp://").split(":")
results: dict[str, list] = {}


def outcome(case: str, call):
    try:
        answer = call()
        results[case] = [200, ""]
        return answer
    except docker.errors.APIError as err:
        results[case] = [err.status_code, err.explanation or ""]
        return None


def raw(case: str, method: str, target: str, body) -> None:
    if isinstance(body, dict) and "__bytes__" in body:  # bytes that are not UTF-8 text
        data = base64.b64decode(body["__bytes__"])
    elif body is not None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
    else:
        data = None
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, target, body=data, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read().decode(errors="replace")
    except OSError as err:
        results[case] = [0, f"connection failed: {err}"]
        return
    finally:
        conn.close()
    try:
        message = json.loads(text).get("message", "")
    except (ValueError, AttributeError):
        message = text[:200]
    results[case] = [answer.status, message]


def lab(user: str, gpus: list[str]) -> dict:
    """A lab's create as DockerSpawner makes it (docker-py), for ``user``."""
    requests = [docker.types.DeviceRequest(driver="nvidia", device_ids=gpus,
                                           capabilities=[["gpu"]])] if gpus else []
    host_config = api.create_host_config(
        binds={f"{project}-home-{user}": {"bind": "/home/jovyan/work", "mode": "rw"}},
        network_mode=f"{project}-labs", cap_drop=["ALL"], security_opt=["no-new-privileges"],
        pids_limit=64, links={}, mounts=[], device_requests=requests, auto_remove=False)
    return api.create_container(
        lab_image, command=["sleep", "600"], name=f"{project}-lab-{user}",
        environment={"NVIDIA_VISIBLE_DEVICES": ",".join(gpus) or "void"},
        volumes=["/home/jovyan/work"], host_config=host_config,
        labels={"gpuhub.project": project, "gpuhub.user": user, "gpuhub.gpus": ",".join(gpus)})


# --- what gpuhub itself does -------------------------------------------------------------
outcome("allowed:version", api.version)
listed = outcome("allowed:list", lambda: api.containers(all=True))
results["listed projects"] = [200, sorted({
    c["Labels"].get("gpuhub.project") or c["Labels"].get("com.docker.compose.project", "?")
    for c in listed or []})]
outcome("allowed:image", lambda: api.inspect_image(lab_image))
made = outcome("allowed:create a GPU lab", lambda: lab("probe", [gpu]))
if made:
    lab_id = made["Id"]
    outcome("allowed:inspect the lab", lambda: api.inspect_container(lab_id))
    outcome("allowed:start the lab", lambda: api.start(lab_id))
    outcome("allowed:stop the lab", lambda: api.stop(lab_id, timeout=1))
    outcome("allowed:remove the lab", lambda: api.remove_container(lab_id, v=True))
outcome("allowed:inspect the work volume", lambda: api.inspect_volume(f"{project}-home-probe"))
outcome("allowed:remove the work volume", lambda: api.remove_volume(f"{project}-home-probe"))
# Left for the test to inspect from the host: what the daemon recorded for a lab.
outcome("allowed:create a CPU lab", lambda: lab("probekept", []))

# --- every hostile request --------------------------------------------------------------
for case, method, target, body in spec["cases"]:
    raw(case, method, target, body)

print(json.dumps(results))
