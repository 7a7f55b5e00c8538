"""What the tests of the Invoke tasks share: the compose command a task should run, and the
check of a one-line error, whether the task ran under MockContext or as a real `invoke`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from os import PathLike

from harness import ROOT


def compose(env_path: str | PathLike, args: str, overrides: Iterable[str] = ()) -> str:
    """The `docker compose` command a task runs for ``args``: the repository as project
    directory, docker-compose.yml then each of ``overrides`` (file names in the repository,
    in order), and the settings file ``env_path``."""
    files = " ".join(f"-f {ROOT / name}" for name in ("docker-compose.yml", *overrides))
    return f"docker compose --project-directory {ROOT} {files} --env-file {env_path} {args}"


def assert_one_line_error(failure, *fragments: str, code: int = 1) -> None:
    """A task failed the gpuhub way: exit ``code``, one line, "error: ...", naming each of
    ``fragments``. ``failure`` is pytest.raises' ExceptionInfo of invoke's Exit (a task
    called under MockContext), or the subprocess.CompletedProcess of a real `invoke` run,
    whose stderr must hold that line and nothing else."""
    if isinstance(failure, subprocess.CompletedProcess):
        message, exited, shown = failure.stderr.strip(), failure.returncode, failure
    else:
        message, exited = failure.value.message, failure.value.code
        shown = message
    assert message.startswith("error: "), shown
    assert "\n" not in message, shown
    for fragment in fragments:
        assert fragment in message, shown
    assert exited == code, (exited, shown)


def hub_database_check(env_path: str | PathLike, overrides: Iterable[str] = (),
                       project: str = "gpuhub", image: str = "gpuhub-hub:latest") -> list[str]:
    """The commands `invoke up` asks with whether the hub database fits the hub image
    (gpuhub.tasks.hubdatabase): no hub container yet, so it asks the image."""
    volume = f"{project}_hub-data"
    return [f"docker volume inspect {volume}", compose(env_path, "ps -aq hub", overrides),
            f"docker image inspect -f '{{{{.Id}}}}' {image}", f"docker volume inspect {volume}",
            f"docker run --rm --network none -e DATABASE_URL -v {volume}:/srv/jupyterhub/data "
            f"{image} python3 -m gpuhub.services.hubdb check"]
