"""The admin's GPU page in a real browser: the hub's layout, live utilisation from the
NVIDIA test double (or the real GPUs), and a Stop button that uses the hub's API.

With GPUHUB_DOCS_SCREENSHOTS=1 it also takes the README's and the docs' picture of the page
(docs/images/gpu-page.png; tests/support/screenshots.py).
"""

import re

import pytest
from selenium.webdriver.common.by import By

from harness.wait import wait_until
from support import gpu_state, screenshots

pytestmark = pytest.mark.e2e

def row_text(admin, uuid: str) -> str:
    rows = admin.driver.find_elements(By.CSS_SELECTOR, f'#gpu-table tr[data-uuid="{uuid}"]')
    return rows[0].text if rows else ""


def cells(admin, uuid: str) -> list[str]:
    """The texts of a GPU's row: GPU, model, held by, since, utilisation, memory, idle."""
    row = admin.driver.find_element(By.CSS_SELECTOR, f'#gpu-table tr[data-uuid="{uuid}"]')
    return [td.text.strip() for td in row.find_elements(By.TAG_NAME, "td")]


def sparkline_heights(admin, uuid: str) -> list[float]:
    """The utilisation sparkline's points, as heights above its bottom (newest last)."""
    line = admin.driver.find_element(
        By.CSS_SELECTOR, f'#gpu-table tr[data-uuid="{uuid}"] td.gpu-utilisation polyline')
    svg_height = 24
    return [svg_height - float(p.split(",")[1]) for p in line.get_attribute("points").split()]


def test_the_gpu_page_shows_live_use_and_stops_a_lab(hub, browser, users, gpu_mode):
    if not gpu_mode.inventory:
        pytest.skip("the hub has no GPUs (--gpu=off): the page has nothing to show")
    bob = browser("bob")
    bob.login("bob", users["bob"])
    bob.wait_at("/hub/spawn", "the spawn page")
    bob.start_lab("gpu1")
    uuid = hub.inspect(hub.lab_container("bob"))["Config"]["Labels"]["gpuhub.gpus"]

    admin = browser("admin")
    admin.login("admin", users["admin"])
    # The hub's own navigation bar, with gpuhub's link for admins.
    admin.driver.find_element(By.LINK_TEXT, "GPUs").click()
    admin.wait_at("/hub/gpus", "the GPU page from the navigation bar")
    admin.wait_for("#gpu-table tbody tr", "the GPU table")
    assert admin.driver.find_element(By.ID, "logout").is_displayed()  # the hub's layout
    rows = admin.driver.find_elements(By.CSS_SELECTOR, "#gpu-table tbody tr")
    assert len(rows) == len(gpu_mode.inventory), [r.text for r in rows]

    if not gpu_mode.real:  # the double reports what the test says; a real GPU, itself
        for percent in (20, 55, 85):  # a few readings, so the sparkline has a shape
            gpu_state.write({uuid: (percent, 9216)})
            wait_until(lambda p=percent: f"{p} %" in row_text(admin, uuid), timeout=60,
                       interval=0.5, what=f"the page to refresh itself to {percent} %",
                       state=lambda: row_text(admin, uuid), logs=hub.logs)
        assert "9.0 / 15.0 GiB" in row_text(admin, uuid)
    text = row_text(admin, uuid)
    assert "bob (gpu1)" in text, text
    gpu, model, held, since, utilisation, memory, idle = cells(admin, uuid)
    given = next(g for g in gpu_mode.inventory if g.uuid == uuid)
    assert model.startswith(given.name) and uuid in model, model
    assert re.fullmatch(r".+ \(\d+ (s|min)\)", since), f"since when bob holds it: {since!r}"
    assert admin.driver.find_element(By.CSS_SELECTOR, "#gpu-line li").text == "nobody"
    if not gpu_mode.real:
        assert idle == "0 s", f"a GPU at 85 % is not idle: {idle!r}"
        heights = sparkline_heights(admin, uuid)  # the readings 20, 55 and 85 %, as drawn
        assert len(heights) >= 3 and heights[-1] > min(heights), heights
    screenshots.save(admin.driver, "gpu-page")
    if not gpu_mode.real:  # the page counts the idle time once the GPU goes quiet
        gpu_state.write({uuid: (0, 9216)})
        wait_until(lambda: re.fullmatch(r"[1-9]\d* s|\d+ min", cells(admin, uuid)[6]), timeout=60,
                   interval=0.5, what="the page to show bob's GPU idle, and for how long",
                   state=lambda: row_text(admin, uuid), logs=hub.logs)

    # Stop bob's lab from the page: the browser calls the hub's API as this admin.
    row = admin.driver.find_element(By.CSS_SELECTOR, f'#gpu-table tr[data-uuid="{uuid}"]')
    row.find_element(By.CSS_SELECTOR, 'button.gpu-stop[data-user="bob"]').click()
    admin.driver.switch_to.alert.accept()
    wait_until(lambda: "free" in row_text(admin, uuid), timeout=90, interval=0.5,
               what="bob's GPU to show free after Stop", state=lambda: row_text(admin, uuid),
               logs=hub.logs)
    assert hub.docker("ps", "-q", "--filter", f"name={hub.lab_container('bob')}").stdout == ""
    gpu_state.clear()
