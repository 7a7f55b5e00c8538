"""GpuhubAuthenticator: NativeAuthenticator's checks, with every bcrypt hash off the event loop."""

import asyncio
import os
import threading
from datetime import datetime, timedelta
from types import SimpleNamespace

import bcrypt
import pytest
from jupyterhub.scopes import parse_scopes
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native
from tornado import web

import gpuhub.hub.auth
from gpuhub.core.accounts import MIN_PASSWORD_LENGTH
from gpuhub.hub.auth import (
    ChangePasswordAdminHandler,
    ChangePasswordHandler,
    GpuhubAuthenticator,
    HashingBusy,
    HashingPool,
    LoginHandler,
)

HASH = bcrypt.hashpw(b"right-password", bcrypt.gensalt(rounds=4))
GOOD_NEW = "new horse 43"


class FakeUser(SimpleNamespace):
    """A row of NativeAuthenticator's users_info table, without a database."""

    def is_valid_password(self, password):
        return bcrypt.checkpw(password.encode(), self.password)


def make_auth(monkeypatch, allowed_failed_logins=2):
    authenticator = GpuhubAuthenticator(add_new_table=False)
    authenticator.allowed_failed_logins = allowed_failed_logins
    authenticator.seconds_before_next_try = 600
    # As gpuhub.hub.hubconfig.update_auth sets them.
    authenticator.minimum_password_length = MIN_PASSWORD_LENGTH
    authenticator.check_common_password = True
    authenticator.db = SimpleNamespace(commit=lambda: None)
    users = {name: FakeUser(password=HASH, is_authorized=authorized, has_2fa=False)
             for name, authorized in [("alice", True), ("bob", True), ("pending", False)]}
    monkeypatch.setattr(authenticator, "get_user", users.get)
    return authenticator


@pytest.fixture
def auth(monkeypatch):
    return make_auth(monkeypatch)


@pytest.fixture
def cheap_salts(monkeypatch):
    """bcrypt's default cost takes ~0.25 s a hash; the forms' new hashes need not."""
    gensalt = bcrypt.gensalt
    monkeypatch.setattr(bcrypt, "gensalt", lambda: gensalt(4))


@pytest.fixture
def hash_threads(monkeypatch):
    """The names of the threads every bcrypt hash and check ran on."""
    names = []
    real_check, real_hash = bcrypt.checkpw, bcrypt.hashpw

    def check(password, hashed):
        names.append(threading.current_thread().name)
        return real_check(password, hashed)

    def hash_(password, salt):
        names.append(threading.current_thread().name)
        return real_hash(password, salt)

    monkeypatch.setattr(bcrypt, "checkpw", check)
    monkeypatch.setattr(bcrypt, "hashpw", hash_)
    return names


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


def test_a_login_that_works_clears_the_failures(auth):
    assert login(auth, "alice", "wrong") is None
    assert login(auth, "alice", "right-password") == "alice"
    assert login(auth, "alice", "wrong") is None
    assert login(auth, "alice", "right-password") == "alice", "one failure since the reset"


def test_the_lockout_ends_after_its_seconds(auth):
    for _ in range(2):
        login(auth, "alice", "wrong")
    assert login(auth, "alice", "right-password") is None
    auth.login_attempts["alice"]["time"] = datetime.now() - timedelta(seconds=601)
    assert login(auth, "alice", "right-password") == "alice"


def test_the_hash_check_runs_off_the_event_loop(auth, hash_threads):
    assert login(auth, "alice", "right-password") == "alice"
    assert hash_threads and all(name.startswith("bcrypt") for name in hash_threads), hash_threads


def test_guesses_sent_together_are_counted_before_any_is_checked(monkeypatch, hash_threads):
    auth = make_auth(monkeypatch, allowed_failed_logins=5)  # LOGIN_MAX_FAILURES' default

    async def burst():
        guesses = [{"username": "alice", "password": f"wrong-{i}"} for i in range(40)]
        guesses.append({"username": "alice", "password": "right-password"})
        return await asyncio.gather(*(auth.authenticate(None, data) for data in guesses))

    answers = asyncio.run(burst())
    assert answers[-1] is None, "the right password, sent after 40 wrong ones, got in"
    assert answers == [None] * 41
    assert len(hash_threads) == 5, f"only LOGIN_MAX_FAILURES guesses are checked: {hash_threads}"
    assert login(auth, "alice", "right-password") is None, "still locked out"


def test_the_right_password_among_the_first_guesses_still_logs_in(monkeypatch):
    auth = make_auth(monkeypatch, allowed_failed_logins=5)

    async def burst():
        guesses = [{"username": "alice", "password": "right-password"}]
        guesses += [{"username": "alice", "password": f"wrong-{i}"} for i in range(40)]
        return await asyncio.gather(*(auth.authenticate(None, data) for data in guesses))

    assert asyncio.run(burst())[0] == "alice"


def test_the_hubs_pool_has_a_thread_per_two_cores_and_32_waiting_per_thread():
    """The README's figures: hashes never take every core, and 32 wait per thread."""
    assert gpuhub.hub.auth.HASHING.workers == max(1, (os.cpu_count() or 2) // 2)
    assert gpuhub.hub.auth.HASHING.limit == 32 * gpuhub.hub.auth.HASHING.workers


def test_a_full_pool_refuses_at_once_with_429_and_retry_after(auth, monkeypatch):
    monkeypatch.setattr(gpuhub.hub.auth, "HASHING", HashingPool(workers=1, limit=1))
    release = threading.Event()
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, hashed: release.wait(10) and real(pw, hashed))

    async def alice_then_bob():
        alice = asyncio.ensure_future(
            auth.authenticate(None, {"username": "alice", "password": "right-password"}))
        await asyncio.sleep(0)  # alice's hash takes the pool's one slot
        try:
            with pytest.raises(HashingBusy) as refused:
                await auth.authenticate(None, {"username": "bob", "password": "right-password"})
        finally:
            release.set()
        return await alice, refused.value

    alice, refused = asyncio.run(alice_then_bob())
    assert alice == "alice", "the login that got a slot completes"
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1, refused.headers
    assert "bob" not in auth.login_attempts, "a guess never checked is not a failure"
    assert gpuhub.hub.auth.HASHING.admitted == 0, "every slot is given back"


def test_the_default_pool_lets_twenty_users_log_in_at_once():
    # The load test logs 20 users in at the same moment; the hub may have 2 cores.
    assert gpuhub.hub.auth.HASHING.limit >= 20, gpuhub.hub.auth.HASHING.limit


def test_retry_after_is_the_time_to_clear_the_queue():
    pool = HashingPool(workers=2, limit=8)
    pool.seconds_per_hash = 0.25
    assert pool.retry_after() == 1, "never less than a second"
    pool.admitted = 8
    assert pool.retry_after() == 1
    pool.seconds_per_hash = 1.1
    assert pool.retry_after() == 5


class Form:
    """Just enough of a hub page handler to run a form's post() without a hub."""

    refusal = LoginHandler.refusal

    def __init__(self, auth, fields, user=None, scopes=()):
        self.authenticator = auth
        self.fields = fields
        self.request = SimpleNamespace(method="POST", path="/hub/form",
                                       arguments={k: [v.encode()] for k, v in fields.items()})
        self.current_user = SimpleNamespace(name=user) if user else None
        self.expanded_scopes, self.parsed_scopes, self.db = set(scopes), parse_scopes(scopes), None
        self.status, self.headers, self.page, self.redirected = 200, {}, None, None

    def get_argument(self, name, default=None, strip=True):
        return self.fields.get(name, default)

    get_body_argument = get_argument

    async def get_current_user(self):
        return self.current_user

    async def login_user(self, data):
        return await self.authenticator.authenticate(self, data)

    async def render_template(self, name, **ns):
        self.page = (name, ns.get("alert"), ns.get("result_message"))
        return "<html>"

    async def _render(self, login_error=None, username=None):
        self.page = ("login", login_error, username)
        return "<html>"

    def set_status(self, code):
        self.status = code

    def set_header(self, name, value):
        self.headers[name] = value

    def get_next_url(self, user):
        return "/hub/home"

    def redirect(self, url):
        self.redirected = url

    def finish(self, html=None):
        pass


def post(handler_class, form, *args):
    asyncio.run(handler_class.post(form, *args))
    return form


def login_form(auth, name, password):
    return post(LoginHandler, Form(auth, {"username": name, "password": password, "_xsrf": "x"}))


def test_the_login_form_logs_in(auth):
    form = login_form(auth, "alice", "right-password")
    assert form.redirected == "/hub/home" and form.page is None


def test_a_refused_login_is_not_hashed_again_on_the_event_loop(auth, hash_threads):
    form = login_form(auth, "alice", "wrong")
    assert form.page == ("login", "Invalid username or password.", "alice")
    assert hash_threads and all(name.startswith("bcrypt") for name in hash_threads), hash_threads


def test_the_login_form_still_tells_an_unauthorized_user_why(auth, hash_threads):
    form = login_form(auth, "pending", "right-password")
    assert form.page == ("login", "User pending has not been authorized by an administrator yet.",
                         "pending")
    assert len(hash_threads) == 1 and hash_threads[0].startswith("bcrypt"), hash_threads
    assert login_form(auth, "pending", "wrong").page[1] == "Invalid username or password."


def test_a_full_pool_gives_the_login_form_429_with_retry_after(auth, monkeypatch):
    full = HashingPool(workers=1, limit=1)
    full.admitted = 1  # its one slot taken
    monkeypatch.setattr(gpuhub.hub.auth, "HASHING", full)
    form = login_form(auth, "alice", "right-password")
    assert form.status == 429
    assert form.headers["Retry-After"].isdigit() and int(form.headers["Retry-After"]) >= 1
    assert form.page[0] == "login" and "Too many logins at once" in form.page[1], form.page
    assert form.redirected is None


def test_our_pages_replace_the_native_ones_that_hash(auth):
    native_routes = dict(NativeAuthenticator.get_handlers(auth, None))
    ours = dict(auth.get_handlers(None))
    assert ours.keys() == native_routes.keys()
    assert ours["/login"] is LoginHandler
    assert ours["/change-password"] is ChangePasswordHandler
    assert ours["/change-password/([^/]+)"] is ChangePasswordAdminHandler
    assert {r: h for r, h in ours.items() if h.__module__ != "gpuhub.hub.auth"} == {
        r: h for r, h in native_routes.items()
        if h not in (native.LoginHandler, native.ChangePasswordHandler,
                     native.ChangePasswordAdminHandler)}


OWN_FORM_CASES = {
    "wrong current password": ("not-it", GOOD_NEW, GOOD_NEW),
    "confirmation differs": ("right-password", GOOD_NEW, GOOD_NEW + "!"),
    "too short": ("right-password", "short", "short"),
    "too common": ("right-password", "password", "password"),
    "changed": ("right-password", GOOD_NEW, GOOD_NEW),
}


@pytest.mark.parametrize("old, new, confirmation", OWN_FORM_CASES.values(), ids=OWN_FORM_CASES)
def test_the_change_password_form_answers_as_nativeauthenticators(monkeypatch, cheap_salts,
                                                                  old, new, confirmation):
    fields = {"old_password": old, "new_password": new, "new_password_confirmation": confirmation}
    theirs_auth, ours_auth = make_auth(monkeypatch), make_auth(monkeypatch)
    theirs = post(native.ChangePasswordHandler, Form(theirs_auth, fields, user="alice"))
    ours = post(ChangePasswordHandler, Form(ours_auth, fields, user="alice"))
    assert ours.page == theirs.page
    changed = theirs.page[1] == "alert-success"
    for authenticator in theirs_auth, ours_auth:
        stored = authenticator.get_user("alice").password
        assert bcrypt.checkpw(new.encode(), stored) is changed
        assert bcrypt.checkpw(b"right-password", stored) is not changed


ADMIN_FORM_CASES = {
    "confirmation differs": ("bob", GOOD_NEW, GOOD_NEW + "!"),
    "too short": ("bob", "short", "short"),
    "no such user": ("nobody", GOOD_NEW, GOOD_NEW),
    "changed": ("bob", GOOD_NEW, GOOD_NEW),
}


@pytest.mark.parametrize("name, new, confirmation", ADMIN_FORM_CASES.values(),
                         ids=ADMIN_FORM_CASES)
def test_the_admin_change_password_form_answers_as_nativeauthenticators(
        monkeypatch, cheap_salts, name, new, confirmation):
    fields = {"new_password": new, "new_password_confirmation": confirmation}
    theirs_auth, ours_auth = make_auth(monkeypatch), make_auth(monkeypatch)
    theirs = post(native.ChangePasswordAdminHandler,
                  Form(theirs_auth, fields, user="admin", scopes=["admin:users"]), name)
    ours = post(ChangePasswordAdminHandler,
                Form(ours_auth, fields, user="admin", scopes=["admin:users"]), name)
    assert ours.page == theirs.page
    if theirs.page[1] == "alert-success":
        assert bcrypt.checkpw(new.encode(), ours_auth.get_user(name).password)


def test_change_password_hashes_off_the_event_loop(auth, cheap_salts, hash_threads):
    fields = {"old_password": "right-password", "new_password": GOOD_NEW,
              "new_password_confirmation": GOOD_NEW}
    form = post(ChangePasswordHandler, Form(auth, fields, user="alice"))
    assert form.page[1] == "alert-success", form.page
    post(ChangePasswordAdminHandler, Form(auth, fields, user="admin", scopes=["admin:users"]),
         "bob")
    assert len(hash_threads) == 3, hash_threads  # check the old one, hash two new ones
    assert all(name.startswith("bcrypt") for name in hash_threads), hash_threads


def test_the_change_password_forms_keep_their_guards(auth):
    fields = {"old_password": "right-password", "new_password": GOOD_NEW,
              "new_password_confirmation": GOOD_NEW}
    with pytest.raises(web.HTTPError) as stranger:
        post(ChangePasswordHandler, Form(auth, fields))
    assert stranger.value.status_code == 403
    with pytest.raises(web.HTTPError) as not_admin:
        post(ChangePasswordAdminHandler, Form(auth, fields, user="alice", scopes=["self"]), "bob")
    assert not_admin.value.status_code in (403, 404)
    assert bcrypt.checkpw(b"right-password", auth.get_user("bob").password), "bob unchanged"


def test_a_full_pool_gives_the_change_password_form_429(auth, monkeypatch):
    full = HashingPool(workers=1, limit=1)
    full.admitted = 1
    monkeypatch.setattr(gpuhub.hub.auth, "HASHING", full)
    fields = {"old_password": "right-password", "new_password": GOOD_NEW,
              "new_password_confirmation": GOOD_NEW}
    with pytest.raises(HashingBusy) as busy:
        post(ChangePasswordHandler, Form(auth, fields, user="alice"))
    # JupyterHub's error page sends an HTTPError's status and headers.
    assert busy.value.status_code == 429 and "Retry-After" in busy.value.headers


def test_no_page_we_serve_uses_the_statsd_client_jupyterhub_6_removed(auth):
    # NativeAuthenticator 1.3's LoginHandler.post calls self.statsd, gone since JupyterHub
    # 6.0 (an AttributeError on every login); ours replaces it. A page that still reaches
    # for it would break logins on the pinned JupyterHub.
    import inspect

    from jupyterhub.handlers import BaseHandler
    assert not hasattr(BaseHandler, "statsd"), "the pinned JupyterHub still has statsd"
    assert "statsd" in inspect.getsource(native.LoginHandler.post)  # what we replace
    for route, handler in auth.get_handlers(None):
        for method in ("get", "post"):
            function = getattr(handler, method)  # what tornado calls
            if function.__module__.startswith(("gpuhub", "nativeauthenticator")):
                assert "statsd" not in inspect.getsource(function), (route, method)
