"""What the unit tests of the Invoke tasks share: the check of a one-line error."""

from __future__ import annotations


def assert_one_line_error(info, *fragments: str, code: int = 1) -> None:
    """A task failed the gpuhub way: exit ``code``, one line, "error: ...", naming each of
    ``fragments`` (``info`` is pytest.raises' ExceptionInfo of invoke's Exit)."""
    message = info.value.message
    assert message.startswith("error: "), message
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.code == code, (info.value.code, message)
