"""The authenticator: NativeAuthenticator, with the bcrypt check off the hub's event loop.

A bcrypt check takes a quarter of a second of CPU. NativeAuthenticator runs it on the
event loop, so 20 users logging in at once froze the whole hub (API calls, proxying of
the hub's pages, spawns) for seconds. Same checks, same order; only the hash
comparison moves to a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import bcrypt
from nativeauthenticator import NativeAuthenticator

# At most one hash per two cores at a time: a login storm then queues its hashes instead
# of taking every core from the event loop that serves the API and the pages.
_HASHING = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="bcrypt")


class GpuhubAuthenticator(NativeAuthenticator):
    """NativeAuthenticator whose password check does not block the hub."""

    async def authenticate(self, handler, data):
        username = self.normalize_username(data["username"])
        password = data["password"]
        user = self.get_user(username)
        if not user:
            return None
        if self.allowed_failed_logins and self.is_blocked(username):
            return None
        stored = user.password  # read on the loop: the DB session is not thread-safe
        valid = await asyncio.get_running_loop().run_in_executor(
            _HASHING, lambda: bcrypt.checkpw(password.encode(), stored))
        validations = [user.is_authorized, valid]
        if user.has_2fa:
            validations.append(user.is_valid_token(data.get("2fa")))
        if all(validations):
            self.successful_login(username)
            return username
        self.add_login_attempt(username)
        return None
