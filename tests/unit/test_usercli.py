"""The user CLI against a real SQLite hub database, with a small fake of the Hub REST API."""

import io
import json
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import requests
from nativeauthenticator.orm import UserInfo

from gpuhub.core import workuse
from gpuhub.core.names import ADMIN_TOKEN_FILE
from gpuhub.core.settings import SETTINGS
from gpuhub.services import usercli, workfolders
from gpuhub.services.usercli import Refused

GOOD = "correct horse 42"


def response(status: int, body=None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = json.dumps(body).encode() if body is not None else b""
    return r


class FakeHub(usercli.Hub):
    """The real Hub (token, database) with its REST calls answered from a dict of users.

    ``fail`` maps a method to a status code to answer with, or to an exception to raise.
    ``authenticator_deletes_password`` mimics NativeAuthenticator.delete_user in the hub.
    """

    def __init__(self, data_dir):
        super().__init__(data_dir=data_dir, api="http://hub.invalid/hub/api")
        self.users: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict | None]] = []
        self.fail: dict = {}
        self.authenticator_deletes_password = False

    def request(self, method, path, **kw):
        self.calls.append((method, path, kw.get("json")))
        failure = self.fail.get(method)
        if isinstance(failure, Exception):
            raise failure
        if failure:
            return response(failure, {"message": "hub says no"})
        name = path.removeprefix("/users").strip("/")
        if method == "GET" and not name:
            return response(200, list(self.users.values()))
        if method == "GET":
            return response(200, self.users[name]) if name in self.users else response(404)
        if method == "POST":
            self.users[name] = {"name": name, "admin": kw["json"]["admin"], "servers": {},
                                "last_activity": None}
            return response(201, self.users[name])
        if method == "PATCH":
            self.users[name].update(kw["json"])
            return response(200, self.users[name])
        if method == "DELETE":
            if self.users.pop(name, None) is None:
                return response(404)
            if self.authenticator_deletes_password:
                info = self.user_info(name)
                self.db.delete(info)
                self.db.commit()
            return response(204)
        raise AssertionError(f"unexpected {method} {path}")


@pytest.fixture
def hub(tmp_path, monkeypatch, capsys):
    """A hub whose database exists, as the running hub made it."""
    for s in SETTINGS:
        monkeypatch.delenv(s.name, raising=False)
    # bcrypt's default cost takes ~0.2 s a hash (test_hash_uses_bcrypt_default_cost
    # checks it); the tier must stay fast.
    gensalt = bcrypt.gensalt
    monkeypatch.setattr(bcrypt, "gensalt", lambda: gensalt(4))
    (tmp_path / ADMIN_TOKEN_FILE).write_text("t0ken\n")
    hub = FakeHub(tmp_path)
    assert rows(hub) == []
    capsys.readouterr()  # alembic reports creating the tables
    yield hub
    if hub._db is not None:
        hub._db.close()


def rows(hub) -> list[str]:
    return [info.username for info in UserInfo.all_users(hub.db)]


def run_main(hub, monkeypatch, capsys, argv, stdin=""):
    monkeypatch.setattr(usercli, "Hub", lambda: hub)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = usercli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_hub_uses_the_admin_token_and_sqlite_in_the_data_dir(hub, tmp_path):
    assert hub.http.headers["Authorization"] == "token t0ken"
    assert hub.db_url == f"sqlite:///{tmp_path}/jupyterhub.sqlite"
    assert rows(hub) == []
    assert (tmp_path / "jupyterhub.sqlite").exists()


def test_hash_uses_bcrypt_default_cost():
    hashed = usercli._hash(GOOD)
    assert hashed.startswith(b"$2b$12$")
    assert bcrypt.checkpw(GOOD.encode(), hashed)


def test_add_creates_an_authorized_user_with_a_bcrypt_hash(hub):
    assert usercli.add(hub, "alice", GOOD, admin=False) == "created user alice"
    info = UserInfo.find(hub.db, "alice")
    assert info.is_authorized
    assert info.password.startswith(b"$2")
    assert GOOD.encode() not in info.password
    assert info.is_valid_password(GOOD)
    assert not info.is_valid_password(GOOD + "!")
    assert hub.users["alice"]["admin"] is False
    assert ("POST", "/users/alice", {"admin": False}) in hub.calls


def test_add_admin(hub):
    assert usercli.add(hub, "root1", GOOD, admin=True) == "created user root1 (admin)"
    assert hub.users["root1"]["admin"] is True


def test_duplicate_add_is_refused_with_exit_2_and_one_line(hub, monkeypatch, capsys):
    usercli.add(hub, "alice", GOOD, admin=False)
    before = UserInfo.find(hub.db, "alice").password
    code, out, err = run_main(hub, monkeypatch, capsys, ["add", "alice"], stdin="other pass 99\n")
    assert code == 2
    assert out == ""
    assert err == ("error: user 'alice' already exists; use `invoke passwd alice` to change "
                   "the password, or pick another name\n")
    assert UserInfo.find(hub.db, "alice").password == before


@pytest.mark.parametrize(("password", "why"), [
    ("", "the password is empty"),
    ("short", "the password is too short (5 characters)"),
    (" padded password ", "white space"),
])
def test_weak_password_is_refused_and_nothing_written(hub, monkeypatch, capsys, password, why):
    code, _, err = run_main(hub, monkeypatch, capsys, ["add", "alice"], stdin=password + "\n")
    assert code == 2
    assert err.startswith("error: ") and why in err
    assert err.count("\n") == 1
    assert rows(hub) == []
    assert hub.users == {}
    assert not [c for c in hub.calls if c[0] != "GET"]


def test_a_common_password_is_refused_by_add_and_passwd_and_nothing_written(hub, monkeypatch,
                                                                            capsys):
    """NativeAuthenticator's list, as the web form checks it ("password" is on it)."""
    code, _, err = run_main(hub, monkeypatch, capsys, ["add", "alice"], stdin="password\n")
    assert (code, err) == (2, "error: that password is on the list of common passwords; "
                              "choose another\n")
    assert rows(hub) == []
    usercli.add(hub, "alice", GOOD, admin=False)
    with pytest.raises(usercli.Refused, match="list of common passwords"):
        usercli.passwd(hub, "alice", "12345678")
    hub.db.rollback()
    assert UserInfo.find(hub.db, "alice").is_valid_password(GOOD)


def test_without_the_common_password_list_no_password_is_taken(hub, monkeypatch, capsys,
                                                                tmp_path):
    monkeypatch.setattr(usercli, "native_folder", lambda: tmp_path)  # no list there
    code, _, err = run_main(hub, monkeypatch, capsys, ["add", "alice"], stdin=GOOD + "\n")
    assert code == 2
    assert err.startswith("error: cannot check the password against the common-password list")
    assert err.endswith("nothing was changed\n") and err.count("\n") == 1
    assert rows(hub) == []


LEAN = """
import sys
from gpuhub.services import usercli
table = usercli.user_info_table()
web = sorted(m for m in ("nativeauthenticator", "nativeauthenticator.nativeauthenticator",
                         "jupyterhub.auth", "jupyterhub.handlers") if m in sys.modules)
from nativeauthenticator import NativeAuthenticator  # the whole package still works after
from nativeauthenticator.orm import UserInfo
print(web, table is UserInfo, table.__tablename__,
      usercli.native_folder().joinpath("common-credentials.txt").is_file())
"""


def test_the_password_table_loads_without_the_authenticator_and_is_the_packages_own():
    """Every user task runs usercli in the hub: NativeAuthenticator's table without its
    package's __init__ (the authenticator, the Hub's web handlers); the same class as a
    plain import of the package gives afterwards (one table in the metadata)."""
    out = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.split() == ["[]", "True", "users_info", "True"], out


@pytest.mark.parametrize("name", ["Alice", "../etc", "a b"])
def test_bad_name_is_refused_before_the_database(hub, monkeypatch, capsys, name):
    code, _, err = run_main(hub, monkeypatch, capsys, ["add", name], stdin=GOOD + "\n")
    assert code == 2
    assert err.startswith(f"error: invalid user name {name!r}")
    assert rows(hub) == [] and hub.calls == []


def test_password_row_is_rolled_back_when_the_hub_refuses(hub):
    hub.fail["POST"] = 500
    with pytest.raises(Refused) as info:
        usercli.add(hub, "alice", GOOD, admin=False)
    assert str(info.value).startswith("the hub refused to create 'alice': 500 ")
    assert rows(hub) == []


def test_password_row_is_rolled_back_when_the_hub_stops_answering(hub):
    hub.fail["POST"] = Refused("the hub is not answering yet; wait a moment")
    with pytest.raises(Refused, match="not answering"):
        usercli.add(hub, "alice", GOOD, admin=False)
    assert rows(hub) == []


def test_add_gives_a_password_to_a_hub_user_that_has_none(hub):
    hub.users["admin"] = {"name": "admin", "admin": False, "servers": {}, "last_activity": None}
    usercli.add(hub, "admin", GOOD, admin=True)
    assert UserInfo.find(hub.db, "admin").is_valid_password(GOOD)
    assert hub.users["admin"]["admin"] is True
    assert not [c for c in hub.calls if c[0] == "POST"]


def test_the_hub_not_answering_is_one_line(hub, tmp_path, monkeypatch, capsys):
    real = usercli.Hub(data_dir=tmp_path, api="http://127.0.0.1:1/hub/api")
    code, _, err = run_main(real, monkeypatch, capsys, ["add", "alice"], stdin=GOOD + "\n")
    assert code == 2
    assert err == "error: the hub is not answering yet; wait a moment, or see `invoke logs`\n"
    assert rows(hub) == []


def test_passwd_changes_the_hash(hub, monkeypatch, capsys):
    usercli.add(hub, "alice", GOOD, admin=False)
    code, out, _ = run_main(hub, monkeypatch, capsys, ["passwd", "alice"], stdin="new horse 43\n")
    assert (code, out) == (0, "password of alice changed\n")
    hub.db.expire_all()
    info = UserInfo.find(hub.db, "alice")
    assert info.is_valid_password("new horse 43")
    assert not info.is_valid_password(GOOD)


def test_passwd_of_an_unknown_user_is_refused(hub, monkeypatch, capsys):
    code, _, err = run_main(hub, monkeypatch, capsys, ["passwd", "nobody"], stdin=GOOD + "\n")
    assert code == 2
    assert err == ("error: no user 'nobody'; see `invoke users`, or create it with "
                   "`invoke adduser nobody`\n")
    assert rows(hub) == []


def test_passwd_weak_password_keeps_the_old_one(hub):
    usercli.add(hub, "alice", GOOD, admin=False)
    with pytest.raises(ValueError, match="too short"):
        usercli.passwd(hub, "alice", "short")
    hub.db.rollback()
    assert UserInfo.find(hub.db, "alice").is_valid_password(GOOD)


@pytest.mark.parametrize("authenticator_deletes_password", [False, True])
def test_delete_removes_user_and_password(hub, authenticator_deletes_password):
    hub.authenticator_deletes_password = authenticator_deletes_password
    usercli.add(hub, "alice", GOOD, admin=False)
    usercli.add(hub, "bob", GOOD, admin=False)
    message = usercli.delete(hub, "alice", purge_data=False)
    assert message == "deleted user alice; work folder kept (delete it with --purge-data)"
    assert "alice" not in hub.users
    assert rows(hub) == ["bob"]
    assert ("DELETE", "/users/alice", None) in hub.calls


def test_delete_a_password_without_a_hub_user(hub):
    usercli.add(hub, "alice", GOOD, admin=False)
    del hub.users["alice"]
    usercli.delete(hub, "alice", purge_data=False)
    assert rows(hub) == []
    assert not [c for c in hub.calls if c[0] == "DELETE"]




def test_delete_unknown_user_is_refused(hub, monkeypatch, capsys):
    code, _, err = run_main(hub, monkeypatch, capsys, ["delete", "nobody"])
    assert code == 2
    assert err == "error: no user 'nobody'; see `invoke users`\n"


def test_delete_keeps_the_password_when_the_hub_refuses(hub):
    usercli.add(hub, "alice", GOOD, admin=False)
    hub.fail["DELETE"] = 403
    with pytest.raises(Refused, match="the hub could not delete 'alice': 403"):
        usercli.delete(hub, "alice", purge_data=False)
    assert rows(hub) == ["alice"]


def test_list_users(hub, monkeypatch, capsys):
    usercli.add(hub, "zoe", GOOD, admin=True)
    usercli.add(hub, "bob", GOOD, admin=False)
    hub.users["zoe"]["servers"] = {"": {"ready": True}}
    hub.users["zoe"]["last_activity"] = "2026-05-01T10:00:00Z"
    hub.users["carl"] = {"name": "carl", "admin": False, "servers": {"": {"ready": False}},
                         "last_activity": None, "groups": ["students", "gpu-users"]}
    code, out, _ = run_main(hub, monkeypatch, capsys, ["list"])
    assert code == 0
    assert json.loads(out) == [
        {"name": "bob", "admin": False, "server": "stopped", "last_activity": None,
         "has_password": True, "groups": [], "work_folder": None},
        {"name": "carl", "admin": False, "server": "starting", "last_activity": None,
         "has_password": False, "groups": ["gpu-users", "students"], "work_folder": None},
        {"name": "zoe", "admin": True, "server": "ready",
         "last_activity": "2026-05-01T10:00:00Z", "has_password": True, "groups": [],
         "work_folder": None},
    ]


def test_list_users_with_work_quota_shows_each_work_folders_use(hub, monkeypatch, capsys):
    """WORK_QUOTA: the broker's report, by escaped user; a user without a folder yet: 0 of 0."""
    usercli.add(hub, "zoe", GOOD, admin=False)
    usercli.add(hub, "bob_b", GOOD, admin=False)
    monkeypatch.setenv("WORK_QUOTA", "64M")
    monkeypatch.setenv("WORK_ROOT", "/srv/work")
    asked = []

    def fetch(docker_host):
        asked.append(docker_host)
        return workuse.parse(b'{"quota": 67108864, "folders": {"bob-5fb": '
                             b'{"used": 1048576, "limit": 67108864}}}')

    monkeypatch.setattr(usercli.workuse, "fetch", fetch)
    monkeypatch.setenv("DOCKER_HOST", "tcp://docker-proxy:2375")
    code, out, _ = run_main(hub, monkeypatch, capsys, ["list"])
    assert code == 0 and asked == ["tcp://docker-proxy:2375"]
    folders = {u["name"]: u["work_folder"] for u in json.loads(out)}
    assert folders == {"bob_b": {"used": 1048576, "limit": 67108864},
                       "zoe": {"used": 0, "limit": 0}}


def test_exists_exit_codes(hub, monkeypatch, capsys):
    usercli.add(hub, "alice", GOOD, admin=False)
    assert run_main(hub, monkeypatch, capsys, ["exists", "alice"])[0] == 0
    assert run_main(hub, monkeypatch, capsys, ["exists", "bob"])[0] == 3


def test_add_if_missing_creates_once_then_leaves_the_user_as_is(hub, monkeypatch, capsys):
    args = ["add", "alice", "--admin", "--if-missing"]
    code, out, err = run_main(hub, monkeypatch, capsys, args, stdin=GOOD + "\n")
    assert (code, out, err) == (0, "created user alice (admin)\n", "")
    code, out, err = run_main(hub, monkeypatch, capsys, args, stdin="Other-pw-98765\n")
    assert (code, out, err) == (usercli.ALREADY, "", "")
    assert UserInfo.find(hub.db, "alice").is_valid_password(GOOD)  # the first password stays


def test_add_through_main_reads_the_password_from_stdin(hub, monkeypatch, capsys):
    code, out, err = run_main(hub, monkeypatch, capsys, ["add", "alice", "--admin"],
                              stdin=GOOD + "\n")
    assert (code, out, err) == (0, "created user alice (admin)\n", "")
    assert UserInfo.find(hub.db, "alice").is_valid_password(GOOD)


@pytest.mark.parametrize(("line", "password"), [
    ("pass word \n", "pass word "), ("no newline", "no newline"), ("\n", ""), ("", "")])
def test_read_password_drops_only_the_newline(line, password):
    assert usercli.read_password(io.StringIO(line)) == password


# --- the work folder: kept by deluser, removed by --purge-data ----------------------

class FakeVolumes:
    """docker.from_env().volumes for a daemon that has ``names``; ``busy`` ones are in use."""

    def __init__(self, names):
        self.names = set(names)
        self.busy: set[str] = set()

    def get(self, name):
        import docker

        if name not in self.names:
            raise docker.errors.NotFound(f"get {name}: no such volume")

        def remove(_):
            if name in self.busy:
                raise docker.errors.APIError("409", explanation="volume is in use - [f00d]")
            self.names.discard(name)

        return type("Volume", (), {"remove": remove})()


@pytest.fixture
def volumes(monkeypatch):
    import docker

    found = FakeVolumes({"gpuhub-home-alice", "gpuhub-home-ann-2dlee", "gpuhub-home-bob"})
    monkeypatch.setattr(docker, "from_env", lambda: type("Client", (), {"volumes": found})())
    return found


def test_delete_purge_data_removes_the_work_volume(hub, volumes):
    for name in ("alice", "ann-lee"):
        usercli.add(hub, name, GOOD, admin=False)
    assert usercli.delete(hub, "ann-lee", purge_data=True) == (
        "deleted user ann-lee; removed work volume gpuhub-home-ann-2dlee")
    assert usercli.delete(hub, "alice", purge_data=False) == (
        "deleted user alice; work folder kept (delete it with --purge-data)")
    assert volumes.names == {"gpuhub-home-alice", "gpuhub-home-bob"}


def test_purge_data_removes_what_an_already_deleted_user_left(hub, volumes, monkeypatch, capsys):
    usercli.add(hub, "alice", GOOD, admin=False)
    usercli.delete(hub, "alice", purge_data=False)
    # `invoke adduser alice` names this as one way out: it must work with the user gone.
    assert usercli.delete(hub, "alice", purge_data=True) == (
        "no user alice any more; removed work volume gpuhub-home-alice")
    assert "gpuhub-home-alice" not in volumes.names
    code, _, err = run_main(hub, monkeypatch, capsys, ["delete", "alice", "--purge-data"])
    assert (code, err) == (2, "error: no user 'alice'; see `invoke users`\n")


SWARM_ENV = {"MODE": "swarm", "REGISTRY": "registry.example.org:5000", "SWARM_HOMES": "/srv/nfs/homes"}


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """Swarm mode: SWARM_HOMES as the hub has it mounted (HOMES_MOUNT), with alice's folder."""
    for key, value in SWARM_ENV.items():
        monkeypatch.setenv(key, value)
    mount = tmp_path / "homes"
    (mount / "alice" / "notebooks").mkdir(parents=True)
    (mount / "alice" / "notebooks" / "thesis.ipynb").write_text("{}")
    (mount / "bob").mkdir()
    monkeypatch.setattr(workfolders, "HOMES_MOUNT", str(mount))
    return mount


def test_swarm_purge_data_removes_the_folder_under_swarm_homes(hub, homes):
    usercli.add(hub, "alice", GOOD, admin=False)
    assert usercli.delete(hub, "alice", purge_data=True) == (
        "deleted user alice; removed work folder /srv/nfs/homes/alice")
    assert sorted(p.name for p in homes.iterdir()) == ["bob"]


def test_swarm_purge_data_follows_no_link_out_of_the_folder(hub, homes, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious").write_text("not alice's")
    (homes / "alice" / "link-to-elsewhere").symlink_to(outside)
    (homes / "ann-2dlee").symlink_to(outside)  # the user's folder itself is a link
    for name in ("alice", "ann-lee"):
        usercli.add(hub, name, GOOD, admin=False)
    usercli.delete(hub, "alice", purge_data=True)
    assert usercli.delete(hub, "ann-lee", purge_data=True).endswith(
        "removed the link /srv/nfs/homes/ann-2dlee (not what it points to)")
    assert (outside / "precious").read_text() == "not alice's"
    assert sorted(p.name for p in homes.iterdir()) == ["bob"]


def test_swarm_purge_data_that_fails_says_what_is_left_in_one_line(hub, homes, monkeypatch, capsys):
    import shutil

    usercli.add(hub, "alice", GOOD, admin=False)

    def refuse(path):
        raise PermissionError(13, "Permission denied", f"{path}/notebooks/thesis.ipynb")

    monkeypatch.setattr(shutil, "rmtree", refuse)
    monkeypatch.setattr(refuse, "avoids_symlink_attacks", True, raising=False)
    code, out, err = run_main(hub, monkeypatch, capsys, ["delete", "alice", "--purge-data"])
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("error: deleted user alice, but the work folder /srv/nfs/homes/alice "
                          "could not be removed (Permission denied: ")
    assert err.endswith("; remove it on a node that mounts SWARM_HOMES: "
                        "sudo rm -r -- /srv/nfs/homes/alice\n")
    assert "alice" not in hub.users


def test_swarm_purge_without_the_homes_mounted_says_so(hub, homes, monkeypatch):
    usercli.add(hub, "alice", GOOD, admin=False)
    monkeypatch.setattr(workfolders, "HOMES_MOUNT", str(homes / "not-mounted"))
    with pytest.raises(usercli.Unfinished, match="SWARM_HOMES is not mounted in the hub"):
        usercli.delete(hub, "alice", purge_data=True)


def test_swarm_purge_of_a_user_without_a_folder(hub, homes):
    usercli.add(hub, "carl", GOOD, admin=False)
    assert usercli.delete(hub, "carl", purge_data=True) == (
        "deleted user carl; no work folder /srv/nfs/homes/carl to remove")


def test_a_volume_still_in_use_is_one_line_saying_what_is_left(hub, volumes, monkeypatch, capsys):
    volumes.busy.add("gpuhub-home-alice")
    usercli.add(hub, "alice", GOOD, admin=False)
    code, _, err = run_main(hub, monkeypatch, capsys, ["delete", "alice", "--purge-data"])
    assert (code, err) == (1, "error: deleted user alice, but the work volume gpuhub-home-alice "
                              "could not be removed (volume is in use - [f00d]); remove it with "
                              "`docker volume rm gpuhub-home-alice` once no container uses it\n")
