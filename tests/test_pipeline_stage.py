"""The component runtime (safealign.kfp.stage): settings from pipeline parameters, artifact wiring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safealign.common.nested import numeric_leaves
from safealign.config import load_settings
from safealign.kfp.deploy import params_json
from safealign.kfp.stage import StageWorkspace, data_hash, pipeline_key

ROOT = Path(__file__).resolve().parents[1]


def test_data_hash_follows_names_and_bytes(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    first = data_hash(tmp_path)
    assert first == data_hash(tmp_path) and first.startswith("sha256:")
    (tmp_path / "sub" / "b.txt").write_text("c")
    assert data_hash(tmp_path) != first
    (tmp_path / "sub" / "b.txt").write_text("b")
    assert data_hash(tmp_path) == first
    (tmp_path / "sub" / "b.txt").rename(tmp_path / "sub" / "c.txt")
    assert data_hash(tmp_path) != first


def test_workspace_settings_come_from_params_json_and_overrides(tmp_path):
    settings = load_settings(ROOT / "params.yaml", ["grpo.steps=9"])
    ws = StageWorkspace("grpo", params_json(settings), ["grpo.lora.r=4"], data_dir=str(tmp_path / "d"),
                        root=str(tmp_path / "ws"))
    assert ws.settings.grpo.steps == 9 and ws.settings.grpo.lora.r == 4
    assert ws.settings.policy.system_prompt is None  # null dropped from the JSON loads as the default
    assert ws.layout.artifacts_dir == tmp_path / "ws" / "artifacts"
    assert ws.layout.data_dir == tmp_path / "d"


def test_link_and_publish_keep_inputs_and_copy_outputs(tmp_path):
    model = tmp_path / "in" / "reward_model"
    model.mkdir(parents=True)
    (model / "w.bin").write_text("weights")
    ws = StageWorkspace("evaluate", params_json(load_settings(ROOT / "params.yaml")), [],
                        root=str(tmp_path / "ws"))
    ws.link(str(model), ws.layout.reward_model_dir)
    assert (ws.layout.reward_model_dir / "w.bin").read_text() == "weights"
    ws.layout.evaluation_dir.mkdir(parents=True)
    (ws.layout.evaluation_dir / "report.md").write_text("# r")
    ws.publish(ws.layout.evaluation_dir, str(tmp_path / "out" / "evaluation"))
    assert (tmp_path / "out" / "evaluation" / "report.md").read_text() == "# r"
    (ws.layout.metrics_dir / "evaluation.json").write_text(json.dumps({"a": {"b": 2}, "ok": True, "s": "x"}))
    assert ws.publish_metrics(str(tmp_path / "out" / "metrics")) == {"a.b": 2.0, "ok": 1.0}


def test_scratch_space_is_removed_at_exit_but_linked_inputs_survive(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_text("weights")
    code = (
        "import sys; from safealign.kfp.stage import StageWorkspace;"
        "ws = StageWorkspace('x', '{}', []); ws.link(sys.argv[1], ws.layout.reward_model_dir);"
        "print(ws.root)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True)
    assert not Path(out.stdout.strip()).exists()
    assert (model / "w.bin").read_text() == "weights"


def test_pipeline_key_follows_data_params_and_overrides():
    """The key names a run's inputs (parent MLflow run, grpo's checkpoint folder): each one must move it."""
    params = params_json(load_settings(ROOT / "params.yaml"))
    other = params_json(load_settings(ROOT / "params.yaml", ["grpo.steps=7"]))
    key = pipeline_key("v1", params, [])
    assert key == pipeline_key("v1", params, None)
    assert pipeline_key("v2", params, []) != key  # data
    assert pipeline_key("v1", other, []) != key  # params
    assert pipeline_key("v1", params, ["grpo.steps=7"]) != key  # overrides


def test_numeric_leaves():
    assert numeric_leaves({"x": [1, 2], "y": {"z": 0.5}}) == {"y.z": 0.5}
