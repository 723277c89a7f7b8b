"""Resume that cannot be fooled: which checkpoints a GRPO run resumes, keeps, refuses and cleans up, and
what a failing run leaves alone. Tiny models, toy scorer, in-process runs; a crash is an exception raised
as a step begins."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safealign.errors import ConfigError
from safealign.policy import grpo as stage

from helpers.grpo import RecordingScorer, dying_at, read_csv, stage_inputs
from helpers.tiny import TINY_POLICY

torch.set_num_threads(2)


def _train(tmp: Path, resume: bool = True, **grpo):
    settings, layout = stage_inputs(tmp, **grpo)
    return stage.train_grpo(settings, resume=resume, scorer=RecordingScorer()), layout


def _crash(tmp: Path, at_step: int, **grpo) -> None:
    """Run the stage and kill it as step ``at_step`` begins (after the checkpoints of earlier steps)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage, "grpo_step", dying_at(at_step))
        with pytest.raises(RuntimeError, match="killed"):
            _train(tmp, **grpo)


def test_other_runs_checkpoints_are_neither_pruned_nor_resumed(tmp_path):
    """Run A (4 steps) leaves checkpoints 2 and 4. Run B (other lr) dies as step 3 begins: its checkpoints 1
    and 2 must survive A's higher step numbers, so B resumes from 2; and A's stay, so A resumes from 4."""
    run_a = {"steps": 4, "checkpoint_every": 2}
    run_b = {"steps": 4, "checkpoint_every": 1, "learning_rate": 2e-3}
    _train(tmp_path, resume=False, **run_a)
    _crash(tmp_path, at_step=3, **run_b)
    resumed_b, _ = _train(tmp_path, **run_b)
    assert resumed_b["resumed_from"] == 2 and resumed_b["steps"] == 4
    again_a, layout = _train(tmp_path, **run_a)
    assert again_a["resumed_from"] == 4 and again_a["steps"] == 4
    runs = sorted(p.name for p in layout.checkpoints_dir.iterdir())
    assert len(runs) == 2 and all(name.startswith("run-") for name in runs)


def test_a_checkpoint_past_the_requested_steps_is_refused_and_a_longer_run_starts_afresh(tmp_path):
    """After a finished 4-step run, asking for 2 steps of the same settings is refused with a message that
    says how to choose (exit 2), with the 4-step run's outputs untouched; asking for 6 steps is another
    run: it starts from step 0 (the step count is part of the fingerprint) and the 4-step run's
    checkpoints stay."""
    first, layout = _train(tmp_path, resume=False, steps=4, checkpoint_every=2)
    outputs = {p: p.read_bytes() for p in (layout.metrics_file("grpo"), layout.grpo_steps_csv)}

    with pytest.raises(ConfigError) as refused:
        _train(tmp_path, steps=2, checkpoint_every=2)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert "step 4 of a 4-step run" in message and "grpo.steps=2" in message
    assert "grpo.steps=4" in message and "--no-resume" in message
    assert all(p.read_bytes() == content for p, content in outputs.items())

    longer, _ = _train(tmp_path, steps=6, checkpoint_every=2)
    assert longer["resumed_from"] is None and longer["steps"] == 6
    four_step_run = [p for p in layout.checkpoints_dir.glob("run-*/step-000004") if (p / "state.pt").exists()]
    assert len(four_step_run) == 2  # the 4-step run's last checkpoint, and the 6-step run's step 4


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_writes_are_removed_when_the_stage_starts(tmp_path):
    """Temp folders and files of killed writers go; a temp whose writer is alive (pid 1) stays."""
    settings, layout = stage_inputs(tmp_path, steps=1)
    dead = _dead_pid()
    stale = [
        layout.checkpoints_dir / "run-0123456789abcdef" / f".step-000002.tmp-{dead}-x1y2",
        layout.artifacts_dir / f".calibration.tmp-{dead}-abcd",
        layout.artifacts_dir / ".reward_model.tmp-k2j4h5",  # a name from before temps carried the pid
        layout.adapter_dir.parent / f".adapter.old-{dead}",
    ]
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "half-written").write_text("x")
    stale_file = layout.metrics_dir / f".grpo.json.tmp-{dead}-q9"
    stale_file.parent.mkdir(parents=True, exist_ok=True)
    stale_file.write_text("{")
    live = layout.artifacts_dir / ".calibration.tmp-1-live"
    live.mkdir()

    _train(tmp_path, steps=1)
    assert [p for p in [*stale, stale_file] if p.exists()] == []
    assert live.exists()


def test_a_failing_run_leaves_the_previous_step_table_alone(tmp_path):
    """metrics/grpo_steps.csv belongs to the last finished run: a run that dies at step 2 does not touch
    it; its own steps go to its run folder's steps.csv, appended, and a resume appends to the same log."""
    _, layout = _train(tmp_path, resume=False, steps=3)
    before = layout.grpo_steps_csv.read_bytes()
    finished = set(layout.checkpoints_dir.glob("run-*"))
    other = {"steps": 3, "checkpoint_every": 1, "learning_rate": 2e-3}
    _crash(tmp_path, at_step=2, **other)
    assert layout.grpo_steps_csv.read_bytes() == before
    (crashed,) = set(layout.checkpoints_dir.glob("run-*")) - finished
    assert [int(float(r["step"])) for r in read_csv(crashed / "steps.csv")] == [1]

    summary, _ = _train(tmp_path, **other)
    assert summary["resumed_from"] == 1
    assert [int(float(r["step"])) for r in read_csv(crashed / "steps.csv")] == [1, 2, 3]
    assert [int(float(r["step"])) for r in read_csv(layout.grpo_steps_csv)] == [1, 2, 3]
    assert layout.grpo_steps_csv.read_bytes() != before


class _RunsCode:
    """Unpickling this object runs ``open(marker, "w")``: what a tampered state.pt could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_state_is_read_as_data_never_as_code(tmp_path):
    """A real checkpoint loads with torch.load(weights_only=True); a state.pt that would run code when
    unpickled is refused as damaged (the run starts afresh) and the code never runs."""
    _crash(tmp_path, at_step=2, steps=2, checkpoint_every=1)
    (state,) = tmp_path.glob("artifacts/grpo_checkpoints/**/state.pt")
    loaded = torch.load(state, weights_only=True)
    assert loaded["step"] == 1

    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "payload": _RunsCode(marker)}, state, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    summary, _ = _train(tmp_path, steps=2, checkpoint_every=1)
    assert not marker.exists()
    assert summary["resumed_from"] is None and summary["steps"] == 2


SAVE_ADAPTER = """
import sys, torch
from pathlib import Path
from peft import LoraConfig, PeftConfig, get_peft_model
from safealign.policy.loading import load_policy
from safealign.policy.outputs import save_adapter
model, _ = load_policy(sys.argv[2])
torch.manual_seed(0)
lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
model = get_peft_model(model, lora)
out = Path(sys.argv[1])
model.save_pretrained(out / "raw")
save_adapter(model, out / "canonical")
reloaded = PeftConfig.from_pretrained(str(out / "canonical"))
assert sorted(reloaded.target_modules) == sorted(lora.target_modules)
"""


def test_identical_adapters_are_identical_files_whatever_the_hash_seed(tmp_path):
    """PEFT writes target_modules in set order, which follows the per-process string hash seed; the stage's
    save_adapter writes it sorted, so the same adapter hashes the same in every process."""
    from safealign.common.hashing import tree_hash

    for seed in (1, 2, 3):
        subprocess.run([sys.executable, "-c", SAVE_ADAPTER, str(tmp_path / str(seed)), TINY_POLICY],
                       env={**os.environ, "PYTHONHASHSEED": str(seed)}, check=True, timeout=300)  # fmt: skip
    raw = {(tmp_path / str(s) / "raw" / "adapter_config.json").read_bytes() for s in (1, 2, 3)}
    assert len(raw) > 1  # the control: PEFT's own file differs between these processes
    assert len({tree_hash(tmp_path / str(s) / "canonical") for s in (1, 2, 3)}) == 1
    config = json.loads((tmp_path / "1" / "canonical" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]


def _outputs(layout) -> dict[str, bytes]:
    files = [p for p in sorted(layout.adapter_dir.rglob("*")) if p.is_file()]
    return {str(p): p.read_bytes() for p in (*files, layout.metrics_file("grpo"), layout.grpo_steps_csv)}


def test_rerunning_a_finished_run_changes_no_output_byte(tmp_path):
    """Issue 32 case 7: rerunning a finished `grpo` rewrote tokenizer.json without its `padding` block (the
    tokenizer had padded no batch in that process) and the summary with this process's time and memory,
    so the adapter's hash changed and `promote` refused it as "changed since it was evaluated"."""
    first, layout = _train(tmp_path, resume=False, steps=2, checkpoint_every=1)
    before = _outputs(layout)
    mtimes = {p: os.stat(p).st_mtime_ns for p in before}
    again, _ = _train(tmp_path, steps=2, checkpoint_every=1)
    assert again == json.loads(json.dumps(first))  # the summary of the process that trained, kept
    after = _outputs(layout)
    assert sorted(after) == sorted(before)
    changed = [p for p in before if after[p] != before[p]]
    assert changed == [], changed
    assert {p: os.stat(p).st_mtime_ns for p in before} == mtimes  # not even rewritten with the same bytes


def test_tokenizer_is_saved_without_the_padding_of_its_last_batch(tmp_path):
    """The fast tokenizer's backend keeps the padding of the last padded batch (selection's generation),
    and tokenizer.json recorded it: the same adapter saved by a process that padded a batch and by one
    that did not (a rerun) differed in bytes. save_tokenizer saves the same bytes either way."""
    from safealign.config import load_settings
    from safealign.policy.loading import load_tokenizer
    from safealign.policy.outputs import save_tokenizer

    from helpers.registry import CACHE

    settings = load_settings(None, [f"paths.cache_dir={CACHE}", f"policy.model={TINY_POLICY}"])
    tok = load_tokenizer(settings)
    save_tokenizer(tok, tmp_path / "fresh")
    tok(["a", "a much longer text"], padding=True, truncation=True, max_length=8)  # a validation batch
    save_tokenizer(tok, tmp_path / "padded")
    fresh, padded = (tmp_path / d / "tokenizer.json" for d in ("fresh", "padded"))
    assert fresh.read_bytes() == padded.read_bytes()
    assert json.loads(padded.read_text())["padding"] is None
