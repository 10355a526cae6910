"""The docs say what the code does: README's commands, CI, configuration table, exports."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import skialith_langgraph
from skialith_langgraph.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _fenced_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", README, flags=re.S)


def test_readme_starts_with_the_two_fresh_machine_commands() -> None:
    first_two = _fenced_commands()[:2]
    assert "skialith demo" in first_two[0] and "pip install" in first_two[0]
    assert "pytest" in first_two[1] and ".[test]" in first_two[1]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = _fenced_commands()[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_configuration_table_lists_every_setting_and_its_default() -> None:
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        row = next((line for line in README.splitlines() if line.startswith(f"| `{field.name}`")), None)
        assert row is not None, f"README's configuration table lacks {field.name}"
        assert f"SKIALITH_{field.name.upper()}" in row
        assert str(getattr(defaults, field.name)) in row


def test_all_is_sorted_and_complete() -> None:
    names = skialith_langgraph.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(skialith_langgraph, name) is not None
    from skialith_langgraph import errors

    error_classes = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
    assert error_classes <= set(names)
    assert {"Projector", "Settings", "SkialithCheckpointer"} <= set(names)


def test_the_license_file_matches_readme_and_pyproject() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("Business Source License 1.1")
    assert 'license = { text = "BUSL-1.1" }' in (ROOT / "pyproject.toml").read_text()
    assert "Business Source License 1.1 ([LICENSE](LICENSE))" in README


def test_readme_speaks_to_users_not_to_the_project_s_own_process() -> None:
    for phrase in ("the seed's", "seed snippet", "the issue", "issue's"):
        assert phrase not in README.lower(), phrase


def test_readme_inspect_commands_parse_as_the_cli_defines_them() -> None:
    """Every ``skialith`` line of the README's Inspect section is a valid command line."""
    import shlex

    from skialith_langgraph.cli import build_parser

    section = README.split("## Inspect what an agent did", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)[0]
    parser = build_parser()
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.startswith("skialith ")]
    assert {line.split()[1] for line in lines} >= {
        "threads", "history", "show", "diff", "drift", "lineage", "audit", "export", "import",
    }  # fmt: skip
    for line in lines:
        parser.parse_args(shlex.split(line)[1:])  # exits 2 on a flag the command does not have
