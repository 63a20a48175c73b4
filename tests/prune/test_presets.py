"""Every shipped prune preset is a valid job, says how to run it, and yields to typed options."""

import re
from dataclasses import fields
from importlib import resources

import pytest
from typer.testing import CliRunner

from llmslim.cli import app
from llmslim.core.errors import BadOptionError
from llmslim.core.presets import available, load_preset
from llmslim.prune import cli as prune_cli
from llmslim.prune.jobs import PruneJob, validate

PRESETS = available("llmslim.prune")


def test_the_documented_presets_exist():
    assert {"afr-paper", "afr-reference", "afr-adaptive", "flap-recover", "afr-recover"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_a_valid_job_and_opens_with_its_command(name):
    text = (resources.files("llmslim.prune") / "presets" / f"{name}.yaml").read_text()
    commands = [line for line in text.splitlines() if line.startswith("#") and "llmslim prune" in line]
    assert commands and f"--preset {name}" in commands[0]
    values = load_preset("llmslim.prune", name, prune_cli.PRESET_FIELDS)
    assert values
    validate(PruneJob(**values, preset=name))  # raises on a value prune would refuse


def capture_job(monkeypatch, argv):
    jobs = []
    monkeypatch.setattr(prune_cli, "run_command", lambda command, job, **kw: jobs.append(job))
    result = CliRunner().invoke(app, ["prune", "smollm2-135m", *argv])
    assert result.exit_code == 0, result.output
    return jobs[0]


def test_typed_options_win_over_the_preset(monkeypatch):
    job = capture_job(monkeypatch, ["--preset", "afr-reference", "--aggregate", "abs", "--ratio", "0.5"])
    assert (job.preset, job.group, job.afr_recipe, job.snip_loss) == ("afr-reference", "sum", "reference", "reference")
    assert (job.aggregate, job.ratio) == ("abs", 0.5)
    # an option typed with its default value still counts as typed
    assert capture_job(monkeypatch, ["--preset", "afr-reference", "--group", "concat"]).group == "concat"
    assert capture_job(monkeypatch, []).group == "concat" and capture_job(monkeypatch, []).preset is None


def test_a_preset_may_not_set_where_outputs_go(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "bad.yaml").write_text("out: /tmp/x\n")
    monkeypatch.setattr(resources, "files", lambda package: tmp_path)
    with pytest.raises(BadOptionError, match=re.escape("preset 'bad' sets unknown options: out")):
        load_preset("llmslim.prune", "bad", prune_cli.PRESET_FIELDS)
    assert "out" not in prune_cli.PRESET_FIELDS and "ratio" in prune_cli.PRESET_FIELDS
    assert {f.name for f in fields(PruneJob)} > prune_cli.PRESET_FIELDS
