import pytest

from llmslim.core.errors import OutputExistsError
from llmslim.core.outputs import atomic_dir, write_manifest


def test_atomic_dir_refuses_then_replaces(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_dir(target):
            pass
    with atomic_dir(target, force=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folders left


def test_failed_run_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_manifest_fields(tmp_path):
    import json

    path = write_manifest(tmp_path, command="prune", args={"ratio": 0.2}, seed=1, timings={"t": 1.0}, results={"x": 2})
    m = json.loads(path.read_text())
    assert m["command"] == "prune" and m["seed"] == 1 and "torch" in m["versions"]
