"""The e2e suite's docs pictures (tests/support/screenshots.py) are written only when asked."""

import pytest

from support import screenshots


class Driver:
    def __init__(self, ok: bool = True):
        self.ok, self.calls = ok, []

    def set_window_size(self, width, height):
        self.calls.append(("size", width, height))

    def save_screenshot(self, path):
        self.calls.append(("save", path))
        return self.ok


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(screenshots.ENV, raising=False)
    driver = Driver()
    assert screenshots.save(driver, "spawn-form", tmp_path) is None
    assert driver.calls == [] and not list(tmp_path.iterdir())


def test_with_it_the_picture_goes_to_the_docs_images_at_one_size(tmp_path, monkeypatch):
    monkeypatch.setenv(screenshots.ENV, "1")
    driver = Driver()
    path = screenshots.save(driver, "spawn-form", tmp_path / "images")
    assert path == tmp_path / "images" / "spawn-form.png"
    assert driver.calls == [("size", 1280, 720), ("save", str(path))]
    assert screenshots.DOCS_IMAGES.parts[-2:] == ("docs", "images")


def test_a_picture_the_browser_could_not_save_fails(tmp_path, monkeypatch):
    monkeypatch.setenv(screenshots.ENV, "1")
    with pytest.raises(AssertionError, match="could not save"):
        screenshots.save(Driver(ok=False), "admin-page", tmp_path)
