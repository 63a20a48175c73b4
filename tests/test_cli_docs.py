"""docs/cli.md is the commands' current --help, and the README and docs use only options
that exist."""

from pathlib import Path

import pytest

from llmslim.core import clidoc

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == clidoc.render() + "\n", \
        "docs/cli.md is stale: python -m llmslim.core.clidoc > docs/cli.md"


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name != "cli.md"], ids=lambda d: d.name)
def test_docs_name_only_options_that_exist(doc):
    known = {path: clidoc.flags(command) for path, command in clidoc.commands()}
    uses = clidoc.option_uses(doc.read_text())
    wrong = [f"{line!r}: {option}" for path, options, line in uses for option in options if option not in known[path]]
    assert not wrong, "\n".join(wrong)


def test_option_uses_reads_command_lines():
    text = "```bash\n./setup.sh && .venv/bin/llmslim prune smollm2-135m --ratio 0.2 \\\n  --eval arc_easy  # --not-this\nllmslim sparsity eval m -p x --limit 2\n```"
    assert clidoc.option_uses(text) == [
        ("prune", ["--ratio", "--eval"], ".venv/bin/llmslim prune smollm2-135m --ratio 0.2  --eval arc_easy  # --not-this"),
        ("sparsity eval", ["--limit"], "llmslim sparsity eval m -p x --limit 2"),
    ]
    known = clidoc.flags(dict(clidoc.commands())["prune"])
    assert "--ratio" in known and "--eval" not in known  # the retired name would be caught
