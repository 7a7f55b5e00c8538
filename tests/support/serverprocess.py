"""A server process a test started (slapd, the OIDC provider): its log, and its stop."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.wait import wait_until


def port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


@dataclass
class ServerProcess:
    process: subprocess.Popen
    log_file: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]

    def wait_until_ready(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        """Wait until ``ready()``; if it never is (or the process exits), stop and raise."""
        def check() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"it exited ({self.process.returncode}): {self.log()}")
            return ready()
        try:
            wait_until(check, timeout=timeout, interval=0.2, what=what, state=self.log)
        except BaseException:
            self.stop()
            raise
