"""The README documents every setting exactly as settings.py defines it, and shows the test
command that .ci/run calls (after the lint step)."""
from pathlib import Path

from floodgate.settings import describe

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    for row in describe():
        assert "| `{}` | {} | {} |".format(*row) in readme, f"README's settings table is stale for {row[0]}"


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs the lint step (ruff, mypy) first, then exactly the README's test command."""
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make lint", "make test"]
    assert "make test" in (ROOT / "README.md").read_text()
    lint = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in lint and "mypy" in lint
