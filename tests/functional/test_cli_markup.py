"""The operator CLI prints bracketed text as written. rich reads `[word]` as a style tag and drops it, so an
error saying "add a [pools.hosts] table" reached the operator as "add a  table", and `migrate --help` lost
`[runners.machine]`. Every help text, and every command's config error, is printed here and checked whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from toolkit.cli.main import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: What rich would take for a style tag (its markup grammar: `[` then a letter, `#`, `/` or `@`), with the
#: escaping backslash, if any, in front.
TAG_LIKE = re.compile(r"\\?(\[[a-z#/@][^\[\]]*\])")


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group of the CLI, with the arguments that reach it."""
    yield path, command
    # typer vendors its own click: a group is told by its subcommands, not by click.Group.
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def bracketed_words(command: Any) -> set[str]:
    """The tag-like words its help sources hold: the docstring and each parameter's help."""
    texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
    return {match for text in texts for match in TAG_LIKE.findall(text)}


ALL = list(commands(get_command(app)))


def test_the_help_walk_finds_the_bracketed_words_it_guards() -> None:
    # GIVEN the whole command tree; THEN the words the operator lost before are among those checked below
    found = {word for _, command in ALL for word in bracketed_words(command)}
    assert {"[runners.machine]", "[runners.autoscaler]"} <= found


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) or "runner-scaler" for p, _ in ALL])
def test_every_help_text_keeps_its_bracketed_words(path: tuple[str, ...], command: Any) -> None:
    # GIVEN a command whose help mentions TOML tables or other bracketed words
    words = bracketed_words(command)
    # WHEN the operator asks for its help
    result = CliRunner().invoke(app, [*path, "--help"])
    # THEN the help prints, with every such word whole
    assert result.exit_code == 0, result.output
    for word in words:
        assert word in result.output, (word, result.output)


def test_migrate_help_names_the_sections_it_reads() -> None:
    result = CliRunner().invoke(app, ["migrate", "--help"])
    assert "[runners.machine]" in result.output and "[runners.autoscaler]" in result.output


@pytest.fixture
def macos_pool_without_hosts(tmp_path: Path) -> Path:
    """The shipped example, its macOS pool without its [pools.hosts] table: an error that names the table."""
    text = (EXAMPLES / "config.toml").read_text(encoding="utf-8")
    start = text.index("  [pools.hosts]\n", text.index('name = "macos"'))
    end = text.index("  [[pools.policy]]", start)
    path = tmp_path / "scaler.toml"
    path.write_text(text[:start] + text[end:], encoding="utf-8")
    return path


def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text("pipeline_id,created_s,stage,name,tags,duration_s\n1,0,0,build,linux docker,60\n")
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["validate-config", "{config}"],
        ["simulate", "--trace", "{trace}", "--config", "{config}"],
        ["status", "-c", "{config}"],
        ["demo", "--trace", "{trace}", "--config", "{config}", "--no-live", "--out", "{out}"],
        ["hooks", "check", "-c", "{config}"],
        ["replay", "{replay}", "-c", "{config}"],
    ],
    ids=lambda c: c[0] if c[0] != "hooks" else "hooks check",
)
def test_a_config_error_with_a_table_name_reaches_the_operator_whole(
    command: list[str], macos_pool_without_hosts: Path, tmp_path: Path
) -> None:
    # GIVEN a config whose macOS pool lacks its [pools.hosts] table
    values = {
        "config": str(macos_pool_without_hosts),
        "trace": str(trace_file(tmp_path)),
        "out": str(tmp_path / "out"),
        "replay": str(Path(__file__).resolve().parents[1] / "fixtures" / "replay.jsonl"),
    }
    # WHEN a command reads it
    result = CliRunner().invoke(app, [part.format(**values) for part in command])
    # THEN it fails and the error names the table to add
    assert result.exit_code != 0
    assert "add a [pools.hosts] table" in result.output, result.output


def test_migrate_error_names_the_sections_it_looked_for(tmp_path: Path) -> None:
    # GIVEN a gitlab-runner config.toml without autoscaling
    plain = tmp_path / "config.toml"
    plain.write_text('[[runners]]\nname = "shell"\nexecutor = "shell"\n', encoding="utf-8")
    # WHEN migrate reads it
    result = CliRunner().invoke(app, ["migrate", str(plain)])
    # THEN the error names both sections, brackets and all
    assert result.exit_code == 1
    assert "no runner uses [runners.machine] or [runners.autoscaler]" in result.output, result.output
