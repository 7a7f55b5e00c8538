"""The README and the documentation site stay true to the code, and every link in them leads
somewhere: the task list, the tests the security model names, the figures they quote."""

import ast
import re
from pathlib import Path

import pytest

from harness import ROOT

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
SECURITY_MODEL = DOCS / "explanation" / "security-model.md"
PAGES = sorted(p for p in DOCS.rglob("*.md")
               if "_build" not in p.parts and "_generated" not in p.parts)


def slug(title: str) -> str:
    """A heading's anchor, as MyST (myst_heading_anchors) and GitHub make it."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower().replace(" ", "-"))


def anchors(path: Path) -> set[str]:
    found, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith(("```", "~~~")):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


def links(path: Path) -> list[str]:
    """The targets of a Markdown file's links and images, outside code."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # https:, mailto: (not fetched: no network here)
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    return broken


def test_every_link_in_the_readme_resolves():
    assert len(links(ROOT / "README.md")) > 20
    broken = broken_links(ROOT / "README.md")
    assert not broken, f"README.md links lead nowhere: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_internal_link_of_the_docs_resolves(page):
    # `nox -s docs` checks the same with Sphinx (-W); this runs with the unit tests.
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)} links lead nowhere: {broken}"


def test_the_readme_fits_on_two_screens_and_its_settings_table_moved_to_the_reference():
    assert len(README.splitlines()) <= 150, len(README.splitlines())
    assert "| setting | default | meaning |" not in README
    assert "(docs/reference/settings.md)" in README


# Each task a newcomer looks for, the page that does it, and what that page must say.
FRONT_PAGE_TASKS = {
    "install": ("tutorial/gpu-server.md", "invoke up"),
    "add a user": ("howto/users.md", "invoke adduser"),
    "give GPUs": ("howto/gpu-limits.md", "GPU_LIMITS="),
    "see who holds them": ("howto/who-holds-gpus.md", "invoke gpus"),
    "upgrade": ("howto/upgrade.md", "invoke up"),
    "back up": ("howto/backup.md", "invoke backup"),
    "run the GPU tests on their runner": ("gpu-runner.md", "nox -s e2e"),
}


def reachable(page: Path) -> set[Path]:
    """The pages one click away: its links, and its toctree's entries."""
    found = {(page.parent / t.partition("#")[0]).resolve() for t in links(page)
             if not re.match(r"[a-z]+:", t) and t.partition("#")[0].endswith(".md")}
    for block in re.findall(r"```\{toctree\}(.*?)```", page.read_text(), re.S):
        for entry in block.splitlines():
            entry = entry.strip()
            if entry and not entry.startswith(":"):
                found.add((page.parent / f"{entry}.md").resolve())
    return found


@pytest.mark.parametrize("task", FRONT_PAGE_TASKS)
def test_a_newcomer_finds_each_task_from_the_front_page_in_two_clicks(task):
    target, says = FRONT_PAGE_TASKS[task]
    index = DOCS / "index.md"
    one = reachable(index)
    two = set().union(*(reachable(p) for p in one if p.exists()))
    dest = (DOCS / target).resolve()
    assert dest in one | two, f"{task}: {target} is not within two clicks of docs/index.md"
    assert says in dest.read_text(), f"{task}: {target} does not say {says!r}"


def test_the_settings_reference_is_generated_not_written():
    page = (DOCS / "reference" / "settings.md").read_text()
    assert "```{include} _generated/settings.md" in page
    assert "| `HUB_PORT` |" not in page  # no hand-kept copy to drift


def test_readme_lists_every_task():
    import tasks

    missing = [name for name in tasks.ns.task_names if f"`invoke {name}" not in README]
    assert not missing, f"README does not document: {missing}"


def test_readme_opens_with_the_two_command_lines():
    head = README[:1500]
    assert "invoke up" in head and "nox" in head


def security_model_citations() -> list[tuple[str, str]]:
    """(file, test) for each test the security model (docs/explanation/security-model.md)
    names; `::name` is in the file last named."""
    section = SECURITY_MODEL.read_text()
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
    text = README + "".join(page.read_text() for page in PAGES)
    said = {int(n) for n in re.findall(r"(\d+) hostile requests", text)}
    assert said == {count}, f"the docs say {sorted(said)} hostile requests; there are {count}"


def test_the_version_is_said_once_and_the_changelog_has_it():
    import gpuhub

    version = gpuhub.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+)?", version), version
    release = version.split(".dev")[0]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {release} " in changelog, f"CHANGELOG.md has no section for {release}"
    assert "dynamic = [\"version\"]" in (ROOT / "pyproject.toml").read_text()


def test_every_profile_the_docs_show_is_a_valid_profile():
    import yaml

    from gpuhub.core.profiles import Profiles, _profile

    shown = []
    for page in PAGES:
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S):
            items = yaml.safe_load(block)
            if isinstance(items, list) and all(isinstance(i, dict) and "display_name" in i
                                               for i in items):
                shown += [(page.name, item) for item in items]
    assert {name for name, _ in shown} >= {"profiles.md", "mig.md"}
    Profiles([_profile(item, name) for name, item in shown])  # each valid, slugs distinct


def test_ci_builds_the_docs_with_warnings_as_errors():
    nox = (ROOT / "noxfile.py").read_text()
    session = nox.split("def docs(", 1)[1].split("\n@nox.session", 1)[0]
    assert '"sphinx-build", "-W", "--keep-going"' in session
    # CI runs the README's test line, `nox`, whose default sessions include docs.
    assert "\n@nox.session\ndef docs(" in nox
    import ast
    default = next(ast.literal_eval(line.split("=", 1)[1].split("#", 1)[0].strip())
                   for line in nox.splitlines() if line.startswith("nox.options.sessions ="))
    assert "docs" in default, "`nox` (the README's test line) would skip the docs"
    assert 'readme_line "**Run the tests**"' in (ROOT / ".ci" / "readme-lines").read_text()
    readme = (ROOT / "README.md").read_text()
    test_line = readme.split("**Run the tests**", 1)[1].split("\n    ", 1)[1].splitlines()[0]
    assert test_line.endswith("/nox"), test_line  # all default sessions, docs among them
    assert "fail_on_warning: true" in (ROOT / ".readthedocs.yaml").read_text()
    conf = (DOCS / "conf.py").read_text()
    assert "myst_heading_anchors = " in conf  # #anchors resolve, and a missing one warns
