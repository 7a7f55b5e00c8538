"""User name and password rules shared by the tasks, the user CLI and the hub."""

import pytest

from gpuhub.core.accounts import MIN_PASSWORD_LENGTH, USERNAME_RULE, check_password, check_username


@pytest.mark.parametrize("name", ["alice", "a", "bob-2", "data_team", "x" * 32])
def test_check_username_accepts(name):
    assert check_username(name) == name


@pytest.mark.parametrize(("name", "shown"), [
    ("Alice", "'Alice'"),
    ("alice smith", "'alice smith'"),
    ("../x", "'../x'"),
    ("", "''"),
    ("2fast", "'2fast'"),
    ("_alice", "'_alice'"),
    ("<'&\">", repr("<'&\">")),
    ("jürgen", "'jürgen'"),
    ("alice\n", "'alice\\n'"),
    ("x" * 33, repr("x" * 33)),
    ("a" * 300, repr("a" * 40 + "…")),
])
def test_check_username_rejects_with_the_rule(name, shown):
    with pytest.raises(ValueError) as info:
        check_username(name)
    assert str(info.value) == f"invalid user name {shown}: use {USERNAME_RULE}"


def test_check_username_rejects_none():
    with pytest.raises(ValueError, match="invalid user name None"):
        check_username(None)


@pytest.mark.parametrize("password", ["x" * MIN_PASSWORD_LENGTH, "correct horse battery", "ä" * 8])
def test_check_password_accepts(password):
    assert check_password(password) == password


@pytest.mark.parametrize(("password", "message"), [
    ("", "the password is empty; use at least 8 characters"),
    ("short", "the password is too short (5 characters); use at least 8"),
    ("x" * (MIN_PASSWORD_LENGTH - 1), "the password is too short (7 characters); use at least 8"),
    (" leading-space", "the password starts or ends with white space; remove it"),
    ("trailing-tab\t", "the password starts or ends with white space; remove it"),
])
def test_check_password_rejects_saying_why(password, message):
    with pytest.raises(ValueError) as info:
        check_password(password)
    assert str(info.value) == message
