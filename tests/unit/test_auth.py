"""GpuhubAuthenticator: NativeAuthenticator's checks, with bcrypt off the event loop."""

import asyncio
import threading
from types import SimpleNamespace

import bcrypt
import pytest

from gpuhub.auth import GpuhubAuthenticator

HASH = bcrypt.hashpw(b"right-password", bcrypt.gensalt(rounds=4))


@pytest.fixture
def auth(monkeypatch):
    authenticator = GpuhubAuthenticator(add_new_table=False)
    authenticator.allowed_failed_logins = 2
    authenticator.seconds_before_next_try = 600
    users = {"alice": SimpleNamespace(password=HASH, is_authorized=True, has_2fa=False),
             "pending": SimpleNamespace(password=HASH, is_authorized=False, has_2fa=False)}
    monkeypatch.setattr(authenticator, "get_user", users.get)
    return authenticator


def login(auth, name, password):
    return asyncio.run(auth.authenticate(None, {"username": name, "password": password}))


def test_right_password_logs_in_and_wrong_does_not(auth):
    assert login(auth, "alice", "right-password") == "alice"
    assert login(auth, "alice", "wrong") is None
    assert login(auth, "nobody", "right-password") is None


def test_an_unauthorized_user_cannot_log_in(auth):
    assert login(auth, "pending", "right-password") is None


def test_failed_logins_lock_the_user_out(auth):
    assert login(auth, "alice", "wrong") is None
    assert login(auth, "alice", "wrong") is None
    assert login(auth, "alice", "right-password") is None, "locked out after 2 failures"


def test_the_hash_check_runs_off_the_event_loop(auth, monkeypatch):
    threads = []
    real = bcrypt.checkpw

    def spy(password, hashed):
        threads.append(threading.current_thread())
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    assert login(auth, "alice", "right-password") == "alice"
    assert threads and threads[0] is not threading.main_thread()
