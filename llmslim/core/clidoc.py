"""docs/cli.md from every command's --help (as simonw/llm's docs/help.md is made), and the
option names each command really has. tests/test_cli_docs.py keeps docs/cli.md current and
checks every `llmslim ...` line in the README and docs against these names.

    python -m llmslim.core.clidoc > docs/cli.md
"""

from __future__ import annotations

import re

WIDTH = 100
ROOT_FLAGS = {"--help", "--debug", "--version"}


def commands() -> list[tuple[str, object]]:
    """[(path, click command)] for every leaf command, sorted: ("budget run", ...)."""
    import typer

    from llmslim.cli import app

    def walk(cmd, path):
        if hasattr(cmd, "commands"):  # a group
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, path + [name])
        else:
            yield " ".join(path), cmd

    return list(walk(typer.main.get_command(app), []))


def flags(command) -> set[str]:
    return {flag for p in command.params for flag in (*getattr(p, "opts", []), *getattr(p, "secondary_opts", []))} | ROOT_FLAGS


def help_text(path: str) -> str:
    from typer.testing import CliRunner

    from llmslim.cli import app

    result = CliRunner().invoke(app, [*path.split(), "--help"], terminal_width=WIDTH,
                                env={"COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb"})
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def render() -> str:
    parts = ["# Command reference", "", "Generated from each command's `--help` by `python -m llmslim.core.clidoc > docs/cli.md`;",
             "tests/test_cli_docs.py fails when it is out of date. Shared options have one name and one default",
             "everywhere (`core/options.py`): MODEL is positional, `--device auto`, `--dtype auto`, `--seed 0`,",
             "`--tasks`, `--limit` (all items unless given), `--batch-size`, `--out` with `--force`, `--json`, `--quiet`.", ""]
    for path, _ in commands():
        parts += [f"## llmslim {path}", "", "```", help_text(path), "```", ""]
    return "\n".join(parts)


def option_uses(text: str) -> list[tuple[str, list[str], str]]:
    """[(command path, options used, the line)] for each `llmslim ...` command line in markdown
    text (backslash continuations joined; each `&&`-joined command read on its own)."""
    names = sorted((path for path, _ in commands()), key=len, reverse=True)
    joined = re.sub(r"\\\n\s*", " ", text)
    uses = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            found = re.search(r"(?:^|[\s`(])(?:\.venv/bin/)?llmslim\s+(.*)", part)
            if not found:
                continue
            rest = found.group(1)
            path = next((n for n in names if rest == n or rest.startswith(n + " ") or rest.startswith(n + "`")), None)
            if path is None:
                continue
            options = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest.split("#")[0])
            uses.append((path, options, part.strip()))
    return uses


if __name__ == "__main__":
    print(render())
