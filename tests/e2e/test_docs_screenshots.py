"""The documentation's pictures of a real stack, in a real browser: the spawn form, a lab
waiting in line for a GPU, and the admin page (the GPU page's is test_gpu_page.py's).

Only with GPUHUB_DOCS_SCREENSHOTS=1 (tests/support/screenshots.py):

    GPUHUB_DOCS_SCREENSHOTS=1 nox -s e2e -- -k "test_docs_screenshots or test_gpu_page or test_admin_page_lists_every_user"

Each page is checked to be the one the picture is of before it is taken, so an error page
fails the test instead of landing in the docs.
"""

import pytest
from selenium.webdriver.common.by import By

from harness.hub import HubUser
from harness.wait import wait_until
from support import screenshots

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not screenshots.wanted(),
                       reason=f"the docs' pictures are taken with {screenshots.ENV}=1"),
]
SPAWN_TIMEOUT = 180


def test_the_spawn_form(hub, browser, users, gpu_mode):
    alice = browser("alice")
    alice.login("alice", users["alice"])
    alice.open("/hub/spawn")
    alice.wait_for("#spawn_form", "the spawn form")
    if gpu_mode.inventory:  # the GPU profiles say how many GPUs are free
        option = alice.wait_for('input[name="profile"][value="gpu1"]', "profile gpu1")
        form = alice.driver.find_element(By.ID, "spawn_form").text
        assert "free" in form, form
        option.click()
    assert screenshots.save(alice.driver, "spawn-form")


def test_a_lab_waiting_in_line_for_a_gpu(hub, browser, users, gpu_mode):
    if not gpu_mode.inventory:
        pytest.skip("the hub has no GPUs (--gpu=off): nobody waits for one")
    holders: list[HubUser] = []
    alice_api = HubUser.signed_in(hub.url, "alice", users["alice"])
    try:
        for n in range(len(gpu_mode.inventory)):  # every GPU held by a 1-GPU lab
            holder = hub.signed_up(f"holder{n}")
            holder.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=hub.logs)
            holders.append(holder)
        alice = browser("alice")
        alice.login("alice", users["alice"])
        alice.open("/hub/spawn")
        alice.wait_for('input[name="profile"][value="gpu1"]', "profile gpu1").click()
        alice.driver.find_element(By.CSS_SELECTOR, '#spawn_form button[type="submit"]').click()

        def progress() -> str:
            found = alice.driver.find_elements(By.ID, "progress-message")
            return found[0].text if found else ""

        wait_until(lambda: "1st in line" in progress(), timeout=60, interval=0.5,
                   what="alice's progress page to say she is 1st in line", state=progress,
                   logs=hub.logs)
        assert screenshots.save(alice.driver, "waiting-line")
    finally:
        if alice_api.server():
            alice_api.stop(logs=hub.logs)
        for holder in holders:
            holder.stop(logs=hub.logs)
