"""The README stays true to the code: its settings table and task list come from it."""

import ast
import re

from gpuhub.core.settings import markdown_table
from harness import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_settings_table_is_generated_from_settings():
    assert markdown_table() in README, (
        "README's settings table is stale; regenerate it with "
        "python -c 'from gpuhub.core.settings import markdown_table; print(markdown_table())'")


def test_readme_lists_every_task():
    import tasks

    missing = [name for name in tasks.ns.task_names if f"`invoke {name}" not in README]
    assert not missing, f"README does not document: {missing}"


def test_readme_opens_with_the_two_command_lines():
    head = README[:1500]
    assert "invoke up" in head and "nox" in head


def security_model_citations() -> list[tuple[str, str]]:
    """(file, test) for each test the Security model names; `::name` is in the file last named."""
    section = README.split("\n## Security model\n", 1)[1].split("\n## ", 1)[0]
    cited, last = [], None
    for path, name in re.findall(r"`((?:tests|harness)/[\w/]+\.py)?::(\w+)`", section):
        last = path or last
        cited.append((last, name))
    return cited


def test_every_test_the_security_model_names_exists():
    cited = security_model_citations()
    assert len(cited) > 100, len(cited)
    defined: dict[str, set[str]] = {}
    for path in {path for path, _ in cited}:
        tree = ast.parse((ROOT / path).read_text())
        defined[path] = {node.name for node in ast.walk(tree)
                         if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    missing = [f"{path}::{name}" for path, name in cited if name not in defined[path]]
    assert not missing, f"the Security model names tests that do not exist: {missing}"


def test_the_readme_counts_the_hostile_requests_there_are():
    from harness.hostile_docker import hostile_requests

    count = len(hostile_requests("p", "gpuhub-lab:test", "GPU-0"))
    said = {int(n) for n in re.findall(r"(\d+) hostile requests", README)}
    assert said == {count}, f"README says {sorted(said)} hostile requests; there are {count}"


def test_the_version_is_said_once_and_the_changelog_has_it():
    import gpuhub

    version = gpuhub.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+)?", version), version
    release = version.split(".dev")[0]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {release} " in changelog, f"CHANGELOG.md has no section for {release}"
    assert "dynamic = [\"version\"]" in (ROOT / "pyproject.toml").read_text()
