"""docs/settings.md documents every setting exactly as settings.py defines it; the README's code
map names only files that exist, and it shows the test command that .ci/run calls (after the lint step)."""
import re
from pathlib import Path

from floodgate.settings import describe

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_settings_table() -> None:
    table = (ROOT / "docs/settings.md").read_text()
    assert "(docs/settings.md)" in (ROOT / "README.md").read_text(), "README links to the table"
    for row in describe():
        line = "| `{}` | {} | {} |".format(*row)
        assert line in table, f"docs/settings.md is stale for {row[0]}; the row should read:\n{line}"


def test_the_code_map_names_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    code_map = readme[readme.index("### Code map"):readme.index("### Design notes")]
    paths = [p for p in re.findall(r"`([\w./-]+)`", code_map) if "/" in p]
    assert len(paths) > 30
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"the README's code map names paths that do not exist: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs the lint step (ruff, mypy) first, then exactly the README's test command."""
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make lint", "make test"]
    assert "make test" in (ROOT / "README.md").read_text()
    lint = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in lint and "mypy" in lint
