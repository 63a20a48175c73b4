"""The shipped task YAMLs: names, rendering, local-file conversions, and prompts that match
lm-eval's own built-in task definitions document for document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmslim.core.errors import BadOptionError, DataError
from llmslim.eval.harness import MAIN_TASKS, PREFIX, TASKS, TASKS_DIR, check_data, render_tasks, resolve_tasks
from llmslim.eval.local_data import MMLU_SUBJECTS, convert, mmlu_rows, piqa_rows


class _AnyTag(yaml.SafeLoader):
    pass


_AnyTag.add_multi_constructor("!", lambda loader, suffix, node: None)


def _shipped() -> dict[str, dict]:
    return {p.name: yaml.load(p.read_text(), Loader=_AnyTag) for p in TASKS_DIR.glob("*.yaml")}


def test_every_main_task_has_a_yaml_and_no_yaml_is_unlisted():
    names = set()
    for cfg in _shipped().values():
        name = cfg.get("group") or cfg.get("task")
        if name is None:
            continue  # a template (_mmlu_template.yaml)
        assert name.startswith(PREFIX), name
        user = name[len(PREFIX):]
        names.add(user)
        alias = cfg.get("task_alias") or cfg.get("group_alias")
        assert alias and user.endswith(alias), (name, alias)  # tables show arc_easy, mmlu > stem
    assert set(MAIN_TASKS) <= names
    assert names <= set(TASKS)


def test_internal_names_do_not_collide_with_builtins():
    import lm_eval

    builtin = Path(lm_eval.__file__).parent / "tasks"
    assert not [p for p in builtin.rglob("*.yaml") if PREFIX in p.read_text(errors="ignore")]


def test_unknown_task_lists_known_ones_and_near_matches():
    with pytest.raises(BadOptionError, match=r"unknown task 'arc_esy' \(did you mean arc_easy"):
        resolve_tasks("arc_esy")
    with pytest.raises(BadOptionError, match="known: arc_easy, arc_challenge, piqa"):
        resolve_tasks(["nonsense"])
    assert resolve_tasks(" arc_easy, piqa ,arc_easy") == ["arc_easy", "piqa"]
    assert resolve_tasks("mmlu_anatomy,mmlu_stem") == ["mmlu_anatomy", "mmlu_stem"]


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(DataError, match="needs .*boolq/val.jsonl, which is missing"):
        check_data(["boolq"], tmp_path)


def test_render_substitutes_absolute_paths_and_is_cached(fake_data, eval_cache):
    first = render_tasks(fake_data)
    assert first == render_tasks(fake_data)
    assert first.is_relative_to(eval_cache)
    texts = {p.name: p.read_text() for p in first.iterdir()}
    assert not any("@DATA@" in t or "@CONVERTED@" in t for t in texts.values())
    assert str(fake_data.resolve() / "arc" / "ARC-Easy-Test.jsonl") in texts["arc_easy.yaml"]
    assert len([n for n in texts if n.startswith("mmlu_") and n[5:-5] in MMLU_SUBJECTS]) == 57
    for name, text in texts.items():
        if name.endswith(".yaml"):
            yaml.load(text, Loader=_AnyTag)  # every rendered file stays valid YAML


def test_piqa_labels_are_joined_line_by_line(fake_data, tmp_path):
    rows = piqa_rows(fake_data)
    assert [r["label"] for r in rows] == [i % 2 for i in range(len(rows))]
    bad = tmp_path / "piqa"
    bad.mkdir()
    (bad / "valid.jsonl").write_text((fake_data / "piqa" / "valid.jsonl").read_text())
    (bad / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for 6 questions"):
        piqa_rows(tmp_path)


def test_mmlu_choices_stay_strings(fake_data):
    rows = mmlu_rows(fake_data / "mmlu" / "test" / "anatomy_test.csv", "anatomy")
    assert rows[0]["choices"][0] == "None" and rows[0]["choices"][3] == "1.50"
    assert isinstance(rows[0]["answer"], int) and rows[0]["subject"] == "anatomy"


def test_conversion_follows_source_changes(fake_data, eval_cache, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fake_data / "piqa", data / "piqa")
    first = convert(data)
    labels = data / "piqa" / "valid-labels.lst"
    labels.write_text(labels.read_text().replace("0", "1"))
    second = convert(data)
    assert first != second
    assert {json.loads(l)["label"] for l in (second / "piqa" / "valid.jsonl").read_text().splitlines()} == {1}


# ---------------------------------------------------------------- mirror of lm-eval's built-ins
def _hub_arc(doc):
    return {"id": doc["id"], "question": doc["question"]["stem"], "answerKey": doc["answerKey"],
            "choices": {"text": [c["text"] for c in doc["question"]["choices"]],
                        "label": [c["label"] for c in doc["question"]["choices"]]}}


def _hub_hellaswag(doc):
    label, _, ctx = doc["ctx"].partition(": ")
    return {"activity_label": label, "ctx_a": ctx, "ctx_b": "", "endings": doc["endings"], "label": str(doc["label"])}


def _hub_boolq(doc):
    return {**doc, "label": int(doc["label"] == "true")}


# ours, lm-eval built-in YAML, local file, split, local doc -> hub doc
MIRRORS = [
    ("arc_easy", "arc/arc_easy.yaml", "arc/ARC-Easy-Test.jsonl", "test", _hub_arc),
    ("arc_challenge", "arc/arc_challenge.yaml", "arc/ARC-Challenge-Test.jsonl", "test", _hub_arc),
    ("piqa", "piqa/piqa.yaml", None, "validation", None),
    ("winogrande", "winogrande/default.yaml", "winogrande/dev_reconstructed.jsonl", "validation", dict),
    ("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag/hellaswag_val_full_preprocessed.jsonl", "validation", _hub_hellaswag),
    ("boolq", "super_glue/boolq/default.yaml", "boolq/val.jsonl", "validation", _hub_boolq),
    ("lambada", "lambada/lambada_openai.yaml", "lambada/lambada_test.jsonl", "test", dict),
    ("mmlu_anatomy", "mmlu/default/mmlu_anatomy.yaml", None, "test", None),
]


def _docs(task):
    return list(task.test_docs() if task.has_test_docs() else task.validation_docs())


@pytest.mark.parametrize("name,builtin,local,split,to_hub", MIRRORS, ids=[m[0] for m in MIRRORS])
def test_prompts_match_lm_eval_builtin(name, builtin, local, split, to_hub, fake_data, eval_cache, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    rendered = render_tasks(fake_data)
    ours = TaskManager(include_path=str(rendered), include_defaults=False).load([PREFIX + name])["tasks"][PREFIX + name]

    if local is None:  # piqa and mmlu: the converted file already has the hub schema
        sub = "piqa/valid.jsonl" if name == "piqa" else "mmlu/test/anatomy.jsonl"
        hub_rows = [json.loads(l) for l in (convert(fake_data) / sub).read_text().splitlines()]
    else:
        hub_rows = [to_hub(json.loads(l)) for l in (fake_data / local).read_text().splitlines()]
    hub_file = tmp_path / "hub.jsonl"
    hub_file.write_text("".join(json.dumps(r) + "\n" for r in hub_rows))
    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / builtin)
    cfg.update(task=f"builtin_{name}", dataset_path="json", dataset_name=None, training_split=None,
               validation_split=None, test_split=None, fewshot_split=None, dataset_kwargs={"data_files": {split: str(hub_file)}})
    cfg[f"{split}_split"] = split
    reference = TaskManager(include_defaults=False).load([cfg])["tasks"][f"builtin_{name}"]

    assert ours.OUTPUT_TYPE == reference.OUTPUT_TYPE
    assert [m["metric"] for m in ours.config.metric_list] == [m["metric"] for m in reference.config.metric_list]
    pairs = list(zip(_docs(ours), _docs(reference), strict=True))
    assert pairs
    for mine, theirs in pairs:
        assert ours.fewshot_context(mine, 0) == reference.fewshot_context(theirs, 0)
        assert ours.doc_to_target(mine) == reference.doc_to_target(theirs)
        if ours.OUTPUT_TYPE == "multiple_choice":
            assert ours.doc_to_choice(mine) == reference.doc_to_choice(theirs)
