"""--help reads well at 80 columns: every option explained, lines that fit, budgets of 0 shown
as no limit, and group help naming the commands the group has."""

import re

import pytest
import typer.main
from typer.testing import CliRunner

from charlm.cli import app

ROOT = typer.main.get_command(app)


def commands(cmd=ROOT, path=()):
    """(path, command) for every command under cmd, groups included."""
    yield path, cmd
    if hasattr(cmd, "list_commands"):
        ctx = cmd.make_context("charlm", [], resilient_parsing=True)
        for name in cmd.list_commands(ctx):
            yield from commands(cmd.get_command(ctx, name), (*path, name))


def help_text(*path: str) -> str:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    return r.output


def test_every_option_and_argument_has_help():
    missing = [(" ".join(path), p.name) for path, cmd in commands() for p in cmd.params
               if not getattr(p, "help", None)]
    assert missing == []
    assert all(cmd.help for path, cmd in commands() if path)


@pytest.mark.parametrize("path", [path for path, _ in commands()], ids=" ".join)
def test_help_fits_80_columns_and_reflows(path):
    text = help_text(*path)
    assert max(map(len, text.splitlines())) <= 80
    # the help text has a wide column: a wrapped line starts by column 34, not beside a
    # column of option names and types (rich's tables left it 26 characters at 80 columns)
    for line in text.splitlines():
        if line.startswith(" " * 20):
            assert len(line) - len(line.lstrip()) <= 34, line


def test_budgets_of_zero_read_as_no_limit():
    text = " ".join(help_text("train").split())
    for option in ("--max-steps", "--max-epochs", "--max-minutes"):
        part = text[text.index(option):].split(" --", 1)[0]
        assert "no limit" in part and "[default: 0" not in part, part


def test_group_help_names_the_commands_it_has():
    for path, cmd in commands():
        if not path or not hasattr(cmd, "list_commands"):
            continue
        ctx = cmd.make_context(path[-1], [], resilient_parsing=True)
        listed = re.fullmatch(r"[^:]+: ([a-z]+(?:, [a-z]+)*)\.", cmd.help)  # "X: a, b, c."
        if listed:
            assert listed[1].split(", ") == cmd.list_commands(ctx), path
