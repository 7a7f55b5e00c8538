"""Docker health check of gpuhub's services: does a local URL answer 200, or was a status
file touched lately?

    python3 -I -S healthcheck.py --settle 15 http://127.0.0.1:8081/hub/health
    python3 -I -S healthcheck.py --settle 15 --fresh /run/lab-firewall.ok 20

Docker runs a check ``interval`` (1 s; it was 2) after the previous one ended, in every container
of the hub's stack. Each check is a process started in the container (``docker exec``):
about 50 ms of CPU here, in the container and in the engine, whatever the check does. At
one every 2 s in five containers, that was 9 CPU-seconds a minute with no one using the
hub, and a storm of starts paid it too. So, ``--settle S``: once a check of this run of
the container has passed, the next one first waits S seconds. Until then (the container
just started, or the last check failed) checks follow every 1 s, so `invoke up` sees a
service healthy as soon as it is, and after a failure the retries come every 1 s too
(gpuhub.core.names.HEALTH_RETRIES of them in a row make it unhealthy); a service that
stops answering is seen at most S seconds later than without.
Docker's ``timeout`` must exceed S. "This run" is the start time of the container's
process 1 (so a restarted container checks quickly again), kept in ``MARKER``, in the
container's own /dev/shm; where it cannot be kept, every check is made at once.

The check starts and imports as little as it can: ``-I`` ignores the PYTHON* variables
and the user's site-packages, ``-S`` skips the ``site`` module, and a bare socket stands
in for urllib, which would import http.client and the email package for one GET.
Standard library only: with ``-S`` nothing from site-packages is importable, and the
lab-firewall and docker-proxy images carry this file alone. Exit status 0 when healthy,
1 otherwise (what Docker expects).
"""

import os
import socket
import sys
import time
from urllib.parse import urlsplit

MARKER = "/dev/shm/gpuhub-healthy"
PROCESS_1 = "/proc/1/stat"


def answers_200(url: str, timeout: float = 2.0) -> bool:
    """GET ``url`` (http, or https without checking the certificate: it is a local probe
    of a server whose certificate names the public host); True if the status is 200."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout) as sock:
            if https:
                import ssl

                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
            request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n"
            sock.sendall(request.encode())
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    status_line = head.split(b"\r\n", 1)[0].split()
    return len(status_line) >= 2 and status_line[1] == b"200"


def touched_within(path: str, seconds: float) -> bool:
    """``path`` exists and was modified less than ``seconds`` ago."""
    try:
        return time.time() - os.stat(path).st_mtime < seconds
    except OSError:
        return False


def this_run(process_1: str = PROCESS_1) -> str:
    """The start time of the container's process 1 (field 22 of its stat line), or ''."""
    try:
        with open(process_1) as f:
            fields = f.read().rpartition(")")[2].split()
        return fields[19]
    except (OSError, IndexError):
        return ""


def settle(seconds: float, marker: str = MARKER, process_1: str = PROCESS_1,
           sleep=time.sleep) -> None:
    """Wait ``seconds`` if the last check of this run of the container passed."""
    run = this_run(process_1)
    try:
        with open(marker) as f:
            passed = f.read()
    except OSError:
        return
    if run and passed == run:
        sleep(seconds)


def record(healthy: bool, marker: str = MARKER, process_1: str = PROCESS_1) -> None:
    """Remember that this check passed (for this run of the container), or that it did not."""
    try:
        if healthy and this_run(process_1):
            with open(marker, "w") as f:
                f.write(this_run(process_1))
        elif os.path.exists(marker):
            os.remove(marker)
    except OSError:
        pass  # nothing remembered: the next check is made at once


def main(argv: list[str]) -> int:
    wait = 0.0
    if argv[:1] == ["--settle"]:
        wait, argv = float(argv[1]), argv[2:]
    if wait:
        settle(wait)
    if argv[:1] == ["--fresh"]:
        healthy = touched_within(argv[1], float(argv[2]))
    else:
        [url] = argv
        healthy = answers_200(url)
    if wait:
        record(healthy)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
