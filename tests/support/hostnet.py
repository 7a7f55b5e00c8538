"""Targets for the lab firewall's tests, on addresses the tests themselves own.

- :class:`Listener`: a TCP server on one address of this host, a gateway of a Docker
  network a test stack made; it counts the connections that reached it.
- :class:`NamespacedService`: a TCP server in a network namespace made here, behind a
  veth pair, on an address in ``198.18.0.0/15`` (RFC 2544, for benchmarks; no real
  network uses it): a stand-in for a metadata service or an office network, reached the
  way labs reach the world, routed through the host.

Both answer every connection with one line. Needs root (``ip netns``); nothing is left
behind by ``close()``.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import socket
import socketserver
import subprocess
import sys
import threading

from harness.wait import wait_until

TEST_RANGE = ipaddress.ip_network("198.18.0.0/15")

SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    conn, _ = server.accept()
    conn.sendall(sys.argv[3].encode() + b"\\n")
    conn.close()
"""


class Listener:
    """Answers ``reply`` to every connection on ``address`` (a port of its own)."""

    def __init__(self, address: str, reply: str):
        outer = self
        self.accepted = 0

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.accepted += 1
                self.request.sendall(reply.encode() + b"\n")

        self.server = socketserver.ThreadingTCPServer((address, 0), Handler)
        self.address, self.port = self.server.server_address[:2]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _free_slot() -> ipaddress.IPv4Network:
    """A /30 of TEST_RANGE that no route of this host covers or is covered by."""
    routes = subprocess.run(["ip", "-4", "-o", "route", "show"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    taken = [ipaddress.ip_network(line.split()[0], strict=False) for line in routes
             if line.split() and line.split()[0] != "default"]
    slots = list(TEST_RANGE.subnets(new_prefix=30))
    for slot in random.sample(slots, 64):
        if not any(slot.overlaps(net) for net in taken):
            return slot
    raise AssertionError(f"no free /30 in {TEST_RANGE}: routes {taken}")


class Namespace:
    """A network namespace of its own behind a veth pair, with ``address`` in it: another
    machine, as far as the host's routes and firewall rules can tell."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.netns, self.host_end, self.ns_end = f"gpuhubtest-{tag}", f"gh{tag}h", f"gh{tag}n"
        slot = _free_slot()
        self.gateway, self.address = (str(a) for a in list(slot.hosts())[:2])
        _ip("netns", "add", self.netns)
        try:
            _ip("link", "add", self.host_end, "type", "veth", "peer", "name", self.ns_end)
            _ip("link", "set", self.ns_end, "netns", self.netns)
            _ip("addr", "add", f"{self.gateway}/30", "dev", self.host_end)
            _ip("link", "set", self.host_end, "up")
            _ip("-n", self.netns, "addr", "add", f"{self.address}/30", "dev", self.ns_end)
            _ip("-n", self.netns, "link", "set", self.ns_end, "up")
        except BaseException:
            self.close()
            raise

    def command(self, *args: str) -> list[str]:
        """``args`` run inside the namespace."""
        return ["ip", "netns", "exec", self.netns, *args]

    def close(self) -> None:
        # Deleting the namespace deletes its veth end, and with it the host's end.
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_end], capture_output=True)


class NamespacedService(Namespace):
    """``reply`` on a port of an address in a network namespace of its own."""

    def __init__(self, reply: str, port: int = 8080):
        super().__init__()
        self.port, self.process = port, None
        try:
            self.process = subprocess.Popen(
                self.command(sys.executable, "-c", SERVER, self.address, str(port), reply))
            wait_until(self._answers, timeout=30, interval=0.2,
                       what=f"the service in {self.netns} to answer on {self.address}:{port}")
        except BaseException:
            self.close()
            raise

    def _answers(self) -> bool:
        with socket.create_connection((self.address, self.port), timeout=2) as conn:
            return bool(conn.recv(100))

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        super().close()
