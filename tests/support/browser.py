"""A headless Chromium that uses the hub like a person does: login form, spawn form, JupyterLab.

Selenium never downloads anything: the driver and browser come from the system
(``CHROMEDRIVER`` / ``CHROME_BIN``, default ``/usr/bin``), and Chromium is told not to
phone home, so the only traffic is to the hub on loopback (127.0.0.1, and ``localhost`` and
``*.localhost``, which Chromium resolves to loopback itself: the hub and each user's lab).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from harness.wait import WaitTimeout, wait_until

CHROME_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-gpu",
    "--no-first-run", "--disable-sync", "--window-size=1400,1000", "--no-proxy-server",
]


def host_resolver_rules(also: tuple[str, ...] = ()) -> str:
    """Any name but loopback's (and ``also``, addresses the test owns) fails to resolve:
    the browser cannot reach the internet."""
    return "--host-resolver-rules=MAP * ~NOTFOUND , " + " , ".join(
        f"EXCLUDE {host}" for host in ("127.0.0.1", "localhost", "*.localhost", *also))
LAB_TIMEOUT = 240  # spawn (SPAWN_TIMEOUT is 180) plus JupyterLab's first load
CELL_TIMEOUT = 180  # first TensorFlow import in a fresh kernel


def chromium(profile_dir: Path, extra_flags: tuple[str, ...] = (),
             also_reach: tuple[str, ...] = ()) -> webdriver.Chrome:
    """Start headless Chromium with a fresh profile, from the system's own binaries; it
    reaches 127.0.0.1 and the addresses ``also_reach`` only."""
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROME_BIN", "/usr/bin/chromium")
    for flag in (*CHROME_FLAGS, host_resolver_rules(also_reach), *extra_flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


class HubBrowser:
    """One person's browser on the hub; every wait goes through ``wait_until``."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, label: str, logs=None):
        self.driver = driver
        self.base = base_url.rstrip("/")
        self.label = label
        self.logs = logs

    # --- generic -------------------------------------------------------------
    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def wait_for(self, css: str, what: str, timeout: float = 30, visible: bool = True):
        """The first element matching ``css`` (displayed, unless ``visible=False``)."""
        def found():
            for element in self.driver.find_elements(By.CSS_SELECTOR, css):
                if not visible or element.is_displayed():
                    return element
            return None
        return wait_until(found, timeout=timeout, interval=0.25, what=f"{what} ({css})",
                          state=self.where, logs=self.logs)

    def wait_at(self, path: str, what: str, timeout: float = 30) -> str:
        """Wait until the browser's URL contains ``path``; return the URL."""
        return wait_until(lambda: path in self.driver.current_url and self.driver.current_url,
                          timeout=timeout, interval=0.25, what=what, state=self.where,
                          logs=self.logs)

    def where(self) -> str:
        body = self.driver.find_elements(By.TAG_NAME, "body")
        text = body[0].text[:500] if body else ""
        return f"{self.label} at {self.driver.current_url}: {text!r}"

    def cookies(self) -> set[str]:
        return {c["name"] for c in self.driver.get_cookies()}

    def save(self, folder: Path) -> None:
        """Screenshot, page HTML and console log of this browser, into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / self.label
        try:
            self.driver.save_screenshot(str(stem) + ".png")
            Path(str(stem) + ".html").write_text(
                f"<!-- {self.driver.current_url} -->\n" + self.driver.page_source)
            console = self.driver.get_log("browser")
            Path(str(stem) + "-console.json").write_text(json.dumps(console, indent=2))
        except WebDriverException as err:  # a dead browser must not hide the test's failure
            Path(str(stem) + "-error.txt").write_text(f"could not save the browser state: {err}")

    # --- hub pages -------------------------------------------------------------
    def submit_login(self, name: str, password: str) -> None:
        self.open("/hub/login")
        self.wait_for("#username_input", "the login form").send_keys(name)
        self.driver.find_element(By.ID, "password_input").send_keys(password)
        self.driver.find_element(By.ID, "login_submit").click()

    def login(self, name: str, password: str) -> None:
        """Log in through the form; wait until the hub shows a page past the login."""
        self.submit_login(name, password)
        wait_until(lambda: "/hub/login" not in self.driver.current_url
                   and self.driver.find_elements(By.ID, "logout"),
                   timeout=30, interval=0.25, what=f"{name} to be logged in",
                   state=self.where, logs=self.logs)

    def start_lab(self, profile: str) -> None:
        """Pick ``profile`` on the spawn form, press Start, wait for JupyterLab to load."""
        self.wait_for("#spawn_form", "the spawn form")
        self.wait_for(f'input[name="profile"][value="{profile}"]', f"profile {profile}").click()
        self.driver.find_element(By.CSS_SELECTOR, '#spawn_form button[type="submit"]').click()
        self.wait_for_lab()

    def wait_for_lab(self) -> None:
        """Through the progress page until JupyterLab shows its file browser.

        A hub error page or a failed spawn ends the wait at once, with what the page says.
        """
        def lab_or_error():
            find = self.driver.find_elements
            if find(By.CSS_SELECTOR, ".jp-LabShell .jp-DirListing-content"):
                return "lab"
            if find(By.CSS_SELECTOR, "div.error") or "failed" in "".join(
                    e.text.lower() for e in find(By.ID, "progress-message")):
                return "error"
            return None
        state = wait_until(lab_or_error, timeout=LAB_TIMEOUT, interval=0.5,
                           what="JupyterLab to load (.jp-LabShell)", state=self.where,
                           logs=self.logs)
        if state == "error":
            raise AssertionError(f"the lab did not start: {self.where()}")

    def stop_lab(self) -> None:
        """Stop the server with the button on /hub/home, as a user does."""
        def stopped() -> bool:
            return (not self.driver.find_element(By.ID, "stop").is_displayed()
                    and "Start My Server" in self.driver.find_element(By.ID, "start").text)

        for attempt in (1, 2):
            self.open("/hub/home")
            button = self.wait_for("#stop", "the Stop My Server button")
            # The button does nothing until the page's script (require.js module "home")
            # has bound it; on a busy machine a click can come first and be lost.
            wait_until(lambda: self.driver.execute_script(
                           "return !!(window.require && require.defined && require.defined('home'))"),
                       timeout=60, interval=0.2, what="the hub home page's script to load",
                       state=self.where, logs=self.logs)
            button.click()
            try:
                wait_until(stopped, timeout=45 if attempt == 1 else 90, interval=0.5,
                           what="the hub home to show the server stopped",
                           state=self.where, logs=self.logs)
                return
            except WaitTimeout:
                # Seen only in the full e2e run, after another user's browser was refused
                # this lab: the click's request never reached the hub. As a user would,
                # reload the page and click once more; a second miss fails the test.
                if attempt == 2:
                    raise

    # --- JupyterLab ------------------------------------------------------------
    def new_notebook(self) -> None:
        self.wait_for('.jp-LauncherCard[data-category="Notebook"]', "the Notebook card").click()
        self.wait_for(".jp-NotebookPanel .jp-Cell .cm-content", "a notebook cell", timeout=60)
        # A cell run before the kernel is connected is silently dropped: wait for "Idle".
        wait_until(lambda: any("| Idle" in e.text for e in self.driver.find_elements(
                       By.CSS_SELECTOR, '.jp-StatusBar-TextItem[title^="Change kernel"]')),
                   timeout=90, interval=0.25, what="the notebook's kernel to be idle",
                   state=self.where, logs=self.logs)

    def run_cell(self, code: str, timeout: float = CELL_TIMEOUT) -> str:
        """Type ``code`` into the notebook's last cell, Shift+Enter, return its output text."""
        cells = self.driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")
        cell = cells[-1]
        editor = cell.find_element(By.CSS_SELECTOR, ".cm-content")
        editor.click()
        editor.send_keys(code)
        editor.send_keys(Keys.SHIFT, Keys.ENTER)

        def finished():
            prompt = cell.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").text.strip()
            # "[ ]:" before the kernel takes it, "[*]:" while it runs, "[1]:" when done.
            return prompt not in ("", "[ ]:", "[*]:") and prompt
        wait_until(finished, timeout=timeout, interval=0.5, what="the cell to finish running",
                   state=lambda: self.outputs(cell), logs=self.logs)
        return self.outputs(cell)

    def outputs(self, cell) -> str:
        return "\n".join(o.get_attribute("textContent") or "" for o in
                         cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))

    def listed_files(self, user: str, folder: str) -> list[str]:
        """Open ``folder`` of ``user``'s lab in the file browser; the names it lists."""
        self.open(f"/user/{user}/lab/tree/{folder}")
        self.wait_for_lab()
        self.wait_for(f'.jp-BreadCrumbs [title="{folder}"]', f"the file browser in {folder}/")

        def names():
            return [e.text for e in self.driver.find_elements(
                By.CSS_SELECTOR, ".jp-DirListing-content .jp-DirListing-itemText")]
        return wait_until(names, timeout=30, interval=0.25, what=f"files listed in {folder}/",
                          state=self.where, logs=self.logs)
