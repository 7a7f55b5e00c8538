"""One origin per user, from the attacker's position: a user plants a page with a script in
their own lab, a logged-in admin opens its link in a real Chromium, and the script tries
to act as the admin (read the hub's page for its XSRF token, create an API token).

With each lab on its own origin (the default) every attempt fails and the hub records no
new token; with USERS_CAN_ACT_AS_EACH_OTHER=true the same page succeeds, so the test can
fail. Asserted on what the hub recorded (the admin's tokens) and what the browser holds
(its cookies for the lab's URL), not on what a guard answered.
"""

from __future__ import annotations

import json
import time

import pytest

from harness.hub import HubUser, LoginFailed
from harness.wait import wait_until
from support.browser import HubBrowser, chromium

pytestmark = pytest.mark.e2e

NOTE = "gpuhub-origin-probe"  # the note on the token the planted page asks the hub for
EXTENSION = "gpuhub-probe"
SPAWN_TIMEOUT = 240
ALICE = ("alice", "alice-e2e-pw-4b1d")  # as tests/e2e/conftest.py creates her


def attack_page(hub: str) -> str:
    """A page that, opened by the admin, tries to act as them in the hub at ``hub``."""
    return """<!doctype html><title>running</title><body>running<script>
(async () => {
  const hub = HUB_ORIGIN, out = {};
  async function attempt(name, act) {
    try { out[name] = await act(); } catch (err) { out[name] = "refused: " + err; }
  }
  await attempt("read_home", async () => {
    const page = await fetch(hub + "/hub/home", {credentials: "include"});
    const found = (await page.text()).match(/xsrf_token: "([^"]+)"/);
    return found ? "xsrf " + found[1] : "no token: HTTP " + page.status;
  });
  const xsrf = (out.read_home || "").startsWith("xsrf ") ? out.read_home.slice(5) : "";
  await attempt("create_token", async () => {
    const answer = await fetch(hub + "/hub/api/users/admin/tokens", {
      method: "POST", credentials: "include",
      headers: {"X-XSRFToken": xsrf, "Content-Type": "application/json"},
      body: JSON.stringify({note: TOKEN_NOTE, expires_in: 600})});
    return "HTTP " + answer.status;
  });
  document.body.textContent = JSON.stringify(out);
  document.title = "done";
})();
</script></body>""".replace("HUB_ORIGIN", json.dumps(hub)).replace("TOKEN_NOTE", json.dumps(NOTE))


def plant(user: HubUser, hub: str) -> str:
    """Write the page into the user's own Jupyter data folder, from their kernel; return
    the link they would send (JupyterLab serves extensions' files without a login)."""
    code = "\n".join([
        "import pathlib, jupyter_core.paths as paths",
        f"d = pathlib.Path(paths.jupyter_data_dir(), 'labextensions', {EXTENSION!r}, 'static')",
        "d.mkdir(parents=True, exist_ok=True)",
        f"(d / 'a.html').write_text({attack_page(hub)!r})",
        "print('planted', d)",
    ])
    assert "planted" in user.run_code(code)
    return f"{user.lab_url()}lab/extensions/{EXTENSION}/static/a.html"


def probe_tokens(admin: HubUser) -> list[dict]:
    answer = admin.api("GET", "/users/admin/tokens")
    answer.raise_for_status()
    return [t for t in answer.json()["api_tokens"] if t.get("note") == NOTE]


def open_as_admin(browser: HubBrowser, link: str) -> dict:
    """The logged-in admin opens the link; what the page's script reported."""
    browser.driver.get(link)
    wait_until(lambda: browser.driver.title == "done", timeout=60, interval=0.25,
               what="the planted page's script to finish", state=browser.where)
    return json.loads(browser.driver.find_element("tag name", "body").text)


def cookies_sent_to(browser: HubBrowser, url: str) -> set[str]:
    """The cookies Chromium would send with a request to ``url`` (its own store)."""
    found = browser.driver.execute_cdp_cmd("Network.getCookies", {"urls": [url]})
    return {c["name"] for c in found["cookies"]}


def run_attack(stack, users: dict[str, str], tmp_path_factory, label: str):
    alice = HubUser.signed_in(stack.url, ALICE[0], users[ALICE[0]])
    if alice.server():  # another test's lab
        alice.stop(logs=stack.logs)
    alice.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    admin = HubUser.signed_in(stack.url, "admin", users["admin"])
    link = plant(alice, stack.url)
    browser = HubBrowser(chromium(tmp_path_factory.mktemp(f"chromium-{label}")), stack.url,
                         f"admin-{label}", logs=stack.logs)
    try:
        browser.login("admin", users["admin"])
        before = probe_tokens(admin)
        report = open_as_admin(browser, link)
        time.sleep(1)  # a request the script sent has long reached the hub by now
        return alice, admin, link, browser, report, probe_tokens(admin)[len(before):]
    except BaseException:
        browser.driver.quit()
        raise


def test_a_page_planted_in_a_lab_cannot_act_as_the_admin_who_opens_it(
        hub, users, tmp_path_factory):
    alice, admin, link, browser, report, new_tokens = run_attack(hub, users, tmp_path_factory,
                                                                 "isolated")
    try:
        port = hub.settings["HUB_PORT"]
        assert link.startswith(f"http://alice.localhost:{port}/user/alice/"), link
        assert not report["read_home"].startswith("xsrf "), report
        assert report["create_token"].startswith("refused: "), report
        assert new_tokens == [], f"the hub recorded a token the page asked for: {new_tokens}"
        # The browser holds the admin's hub login, and would not send it to the lab.
        assert "jupyterhub-hub-login" in cookies_sent_to(browser, f"{hub.url}/hub/home")
        assert "jupyterhub-hub-login" not in cookies_sent_to(browser, link)
        # No admin session can be made on the lab's origin either: the hub refuses a login
        # on any host but its own.
        with pytest.raises(LoginFailed, match="HTTP 403.*not on another host"):
            HubUser(link.split("/user/")[0], "admin").login(users["admin"])
    finally:
        browser.driver.quit()
        alice.stop(logs=hub.logs)


@pytest.fixture(scope="module")
def shared_origin_stack(stack_factory, users):
    """A second stack whose admin accepted USERS_CAN_ACT_AS_EACH_OTHER=true."""
    stack = stack_factory(USERS_CAN_ACT_AS_EACH_OTHER="true")
    result = stack.up("--no-build")
    assert "WARNING: Labs share the hub's origin" in result.stdout, result.stdout
    stack.invoke("adduser", ALICE[0], "--password-stdin", stdin=users[ALICE[0]] + "\n")
    return stack


def test_with_labs_on_the_hub_origin_the_same_page_acts_as_the_admin(
        shared_origin_stack, users, tmp_path_factory):
    stack = shared_origin_stack
    passwords = {ALICE[0]: users[ALICE[0]], "admin": stack.admin_passwords["admin"]}
    alice, admin, link, browser, report, new_tokens = run_attack(stack, passwords,
                                                                 tmp_path_factory, "shared")
    try:
        assert link.startswith(f"{stack.url}/user/alice/"), link
        assert report["read_home"].startswith("xsrf "), report
        assert report["create_token"] == "HTTP 201", report
        assert len(new_tokens) == 1, new_tokens
        # What the admin is told, on every hub page.
        browser.open("/hub/admin")
        warning = browser.wait_for("#gpuhub-shared-origin", "the shared-origin warning")
        assert "any user can act as anyone who opens a link into their lab" in warning.text
    finally:
        browser.driver.quit()
        alice.stop(logs=stack.logs)
