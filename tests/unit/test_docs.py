"""The README stays true to the code: its settings table and task list come from it."""


from gpuhub.settings import markdown_table
from harness import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_settings_table_is_generated_from_settings():
    assert markdown_table() in README, (
        "README's settings table is stale; regenerate it with "
        "python -c 'from gpuhub.settings import markdown_table; print(markdown_table())'")


def test_readme_lists_every_task():
    import tasks

    missing = [name for name in tasks.ns.task_names if f"`invoke {name}" not in README]
    assert not missing, f"README does not document: {missing}"


def test_readme_opens_with_the_two_command_lines():
    head = README[:1500]
    assert "invoke up" in head and "nox" in head
