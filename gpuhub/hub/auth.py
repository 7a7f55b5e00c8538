"""The authenticator: NativeAuthenticator, with every bcrypt hash off the hub's event loop.

A bcrypt hash takes a quarter of a second of CPU. NativeAuthenticator computes it on the
event loop (to check a login, again to word the error of a refused one, and in both
change-password forms), so 20 users logging in at once froze the whole hub (API calls,
proxying of the hub's pages, spawns) for seconds. Here every hash runs in one small pool:

- The pool is bounded: a login that would queue behind a full pool is answered at once
  with 429 and Retry-After, instead of waiting behind a flood.
- Per user, the lockout check and the count of the attempt are one step on the event loop,
  taken before the hash is awaited: guesses sent at the same time cannot all be checked
  before the first failure is counted.
- Same checks, same order, same rules and messages as NativeAuthenticator's forms.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import bcrypt
from nativeauthenticator import NativeAuthenticator, handlers
from tornado import web

# NativeAuthenticator's own words.
INVALID_LOGIN = "Invalid username or password."
NOT_AUTHORIZED = "User {} has not been authorized by an administrator yet."


class HashingBusy(web.HTTPError):
    """429: every slot of the hashing pool is taken; come back in ``retry_after`` seconds."""

    def __init__(self, retry_after: int):
        self.message = f"Too many logins at once. Please try again in {retry_after} seconds."
        super().__init__(429, self.message)
        # JupyterHub's error page copies an HTTPError's headers into the answer (the
        # error handler clears those set before); the login form sets it itself.
        self.headers = {"Retry-After": str(retry_after)}


class HashingPool:
    """Threads for bcrypt, and a bound on the hashes that may wait for them."""

    def __init__(self, workers: int, limit: int):
        self.workers = workers
        self.limit = limit
        self.admitted = 0  # queued or running; changed on the event loop only
        self.seconds_per_hash = 0.25  # bcrypt's default cost on one core; then as measured
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="bcrypt")

    def submit(self, fn: Callable, *args) -> asyncio.Future:
        """Start ``fn(*args)`` in the pool, or raise HashingBusy if every slot is taken.

        Synchronous on purpose: the caller knows, before it awaits anything, whether the
        hash happens at all. The slot is given back when the hash is done.
        """
        if self.admitted >= self.limit:
            raise HashingBusy(self.retry_after())
        self.admitted += 1
        hashing = asyncio.get_running_loop().run_in_executor(self._threads, self._timed, fn, args)
        hashing.add_done_callback(self._release)  # runs on the event loop
        return hashing

    def retry_after(self) -> int:
        """Seconds until the hashes admitted now are done."""
        return max(1, math.ceil(self.admitted * self.seconds_per_hash / self.workers))

    def _release(self, _hashing: asyncio.Future) -> None:
        self.admitted -= 1

    def _timed(self, fn: Callable, args: tuple):
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.seconds_per_hash = time.monotonic() - started


_WORKERS = max(1, (os.cpu_count() or 2) // 2)
# At most one hash per two cores at a time: a login storm then queues its hashes instead of
# taking every core from the event loop that serves the API and the pages. 32 waiting per
# thread is ~8 s of hashing: a class of 30 logging in at the same moment on a 2-core hub
# still gets in (the load test logs 20 in at once); a login that would wait longer is told
# at once to come back. A flood of guesses at one account takes at most LOGIN_MAX_FAILURES
# of these slots: the lockout refuses the rest before hashing.
HASHING = HashingPool(_WORKERS, limit=32 * _WORKERS)


class GpuhubAuthenticator(NativeAuthenticator):
    """NativeAuthenticator whose password hashes do not block the hub."""

    async def authenticate(self, handler, data):
        username = self.normalize_username(data["username"])
        password = data["password"]
        user = self.get_user(username)
        if not user:
            return None
        # From here to the await is one step on the event loop: no other login of this
        # user can run between the lockout check and the count of this attempt.
        if self.allowed_failed_logins and self.is_blocked(username):
            return None
        # The DB session is not thread-safe: read the hash here, not in the pool. A full
        # pool raises before the attempt is counted: that guess was never checked.
        checking = HASHING.submit(bcrypt.checkpw, password.encode(), user.password)
        # Counted as a failure while in flight (NativeAuthenticator's login_attempts, so
        # its is_blocked sees it); a success below clears it as NativeAuthenticator does.
        self.add_login_attempt(username)
        valid = await checking
        validations = [user.is_authorized, valid]
        if user.has_2fa:
            validations.append(user.is_valid_token(data.get("2fa")))
        if all(validations):
            self.successful_login(username)
            return username
        if valid and not user.is_authorized and handler is not None:
            # What NativeAuthenticator's form says then, without hashing the password again.
            handler.refusal = NOT_AUTHORIZED.format(data["username"])
        return None

    async def check_password(self, username: str, password: str) -> bool:
        """Whether ``password`` is the user's, checked in the pool. Not a login: no lockout
        count, as in NativeAuthenticator's change-password form."""
        user = self.get_user(username)
        if user is None:
            return False
        return await HASHING.submit(bcrypt.checkpw, password.encode(), user.password)

    async def set_password(self, username: str, new_password: str) -> bool:
        """NativeAuthenticator's change_password (same rules), hashing in the pool."""
        if self.get_user(username) is None or not self.is_password_strong(new_password):
            return False
        hashed = await HASHING.submit(bcrypt.hashpw, new_password.encode(), bcrypt.gensalt())
        user = self.get_user(username)  # again: the user may have been deleted meanwhile
        if user is None:
            return False
        user.password = hashed
        self.db.commit()
        return True

    def get_handlers(self, app):
        """NativeAuthenticator's pages, with ours for those that hash."""
        return [(route, OURS.get(handler, handler)) for route, handler in super().get_handlers(app)]


def weak_password_message(authenticator: NativeAuthenticator, whose: str) -> str:
    """NativeAuthenticator's words for a new password its rules refuse."""
    length = authenticator.minimum_password_length
    if length > 0:
        return (f"Something went wrong!\nBe sure {whose} has at least {length} characters "
                "and is not too common.")
    return f"Something went wrong!\nBe sure {whose} is not too common."


class LoginHandler(handlers.LoginHandler):
    """NativeAuthenticator's login form, without its second hash of a refused password."""

    refusal = INVALID_LOGIN  # authenticate() words it otherwise, for this request only
    _render_sync = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # NativeAuthenticator adds its templates to the hub's async template loader only;
        # an error page is rendered with the sync one (see _render).
        self.settings["jinja2_env_sync"].loader = self.settings["jinja2_env"].loader

    def _render(self, login_error=None, username=None, sync=False, **_error_page):
        """NativeAuthenticator's login page, also where JupyterHub shows a refused form.

        JupyterHub shows an error of a login POST (an expired form's XSRF check) on the
        login page: its error handler cannot await, so it asks for the page with
        ``sync=True`` and the error page's keywords, which NativeAuthenticator's ``_render``
        does not take (TypeError, and an empty 403).
        """
        self._render_sync = sync
        try:
            return super()._render(login_error=login_error, username=username)
        finally:
            self._render_sync = False

    def render_template(self, name, **ns):
        if self._render_sync:
            ns["sync"] = True
        return super().render_template(name, **ns)

    async def post(self):
        # The form's fields as NativeAuthenticator reads them.
        data = {arg: self.get_argument(arg, strip=False) for arg in self.request.arguments}
        try:
            user = await self.login_user(data)
        except HashingBusy as busy:
            self.set_status(busy.status_code)
            self.set_header("Retry-After", busy.headers["Retry-After"])
            self.finish(await self._render(login_error=busy.message,
                                           username=data.get("username")))
            return
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        self.finish(await self._render(login_error=self.refusal, username=data.get("username")))


class ChangePasswordHandler(handlers.ChangePasswordHandler):
    """A user's own change-password form, both hashes in the pool."""

    @web.authenticated  # a decorator is not inherited with the method it decorates
    async def post(self):
        user = await self.get_current_user()
        old_password = self.get_body_argument("old_password", strip=False)
        new_password = self.get_body_argument("new_password", strip=False)
        confirmation = self.get_body_argument("new_password_confirmation", strip=False)
        if not await self.authenticator.check_password(user.name, old_password):
            alert, message = "alert-danger", "Your current password was incorrect. Please try again."
        elif new_password != confirmation:
            alert, message = ("alert-danger", "Your new password didn't match the "
                              "confirmation. Please try again.")
        elif await self.authenticator.set_password(user.name, new_password):
            alert, message = "alert-success", "Your password has been changed successfully!"
        else:
            alert, message = "alert-danger", weak_password_message(self.authenticator,
                                                                   "your new password")
        self.finish(await self.render_template("change-password.html", user_name=user.name,
                                               result_message=message, alert=alert))


class ChangePasswordAdminHandler(handlers.ChangePasswordAdminHandler):
    """An admin's form to set any user's password, the hash in the pool."""

    @handlers.admin_users_scope  # NativeAuthenticator's own guard; not inherited either
    async def post(self, user_name):
        new_password = self.get_body_argument("new_password", strip=False)
        confirmation = self.get_body_argument("new_password_confirmation", strip=False)
        if new_password != confirmation:
            alert, message = ("alert-danger", "The new password didn't match the "
                              "confirmation. Please try again.")
        elif await self.authenticator.set_password(user_name, new_password):
            alert, message = ("alert-success",
                              f"The password for {user_name} has been changed successfully")
        else:
            alert, message = "alert-danger", weak_password_message(
                self.authenticator, f"the new password for {user_name}")
        self.finish(await self.render_template("change-password-admin.html",
                                               user_name=user_name, result_message=message,
                                               alert=alert))


OURS = {handlers.LoginHandler: LoginHandler,
        handlers.ChangePasswordHandler: ChangePasswordHandler,
        handlers.ChangePasswordAdminHandler: ChangePasswordAdminHandler}
