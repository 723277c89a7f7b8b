"""bench/compare_runs.py --same: two runs agree when only timings differ, and any result change is named."""

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # compare_runs imports its sibling rounds_report
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "bench" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, safety: float, seconds: float, reply: str) -> Path:
    (folder / "metrics").mkdir(parents=True)
    (folder / "artifacts" / "evaluation").mkdir(parents=True)
    metrics = {"sets": {"adversarial": {"safety": safety}}, "timing_s": {"total_s": seconds},
               "train_seconds": seconds, "run_id": f"r{seconds}"}  # fmt: skip
    (folder / "metrics" / "evaluation.json").write_text(json.dumps(metrics))
    (folder / "metrics" / "grpo_steps.csv").write_text(f"step,reward_mean,s_step\n1,0.4,{seconds}\n")
    (folder / "artifacts" / "evaluation" / "generations.jsonl").write_text(json.dumps({"a": reply}) + "\n")
    return folder


def test_same_runs_differ_only_in_timings_and_a_changed_result_is_named(tmp_path, monkeypatch):
    compare = _module(monkeypatch)
    before = _run(tmp_path / "before", 0.7, 10.0, "I can't help.")
    assert compare.differences(before, _run(tmp_path / "slower", 0.7, 99.0, "I can't help.")) == []
    changed = compare.differences(before, _run(tmp_path / "other", 0.71, 10.0, "I can't help."))
    assert changed == ["evaluation.json.sets.adversarial.safety: 0.7 != 0.71"]
    reply = compare.differences(before, _run(tmp_path / "reply", 0.7, 10.0, "Sure."))
    assert [d.split(":")[0] for d in reply] == ["generations.jsonl bytes"]
    shutil.rmtree(tmp_path / "reply" / "metrics")
    missing = compare.differences(before, tmp_path / "reply")
    assert any("'<missing>'" in d for d in missing)
