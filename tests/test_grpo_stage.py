"""The `safealign grpo` stage end to end on tiny models: outputs, logging, prompt hygiene, the constraint,
and kill -9 + resume in a real subprocess."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from safealign.common.layout import Layout

from helpers.grpo import (
    HELDOUT_SENTINEL,
    RecordingScorer,
    ScriptedValidationScorer,
    dying_at,
    grpo_params,
    read_csv,
    stage_inputs,
    write_splits,
)

torch.set_num_threads(2)


def _run_checkpoints(layout: Layout) -> dict[str, Path]:
    """The checkpoints of the one run under ``checkpoints_dir``, by folder name (``step-000002``, ...)."""
    runs = [p for p in layout.checkpoints_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1 and runs[0].name.startswith("run-"), runs
    return {p.name: p for p in runs[0].iterdir() if p.name.startswith("step-")}


def test_benign_beta_reaches_the_step_only_for_benign_prompts(tmp_path, monkeypatch):
    """The stage hands grpo.benign_beta to the step for the benign prompts it drew and beta (0) for the
    adversarial ones: every step, the KL coefficient is 0.5 exactly on the benign prompt, only the benign
    prompts go through the reference forward (an adversarial prompt's KL term is exactly zero), and the KL
    is 0 at step 1 (the fresh adapter is the reference) and above 0 afterwards. Swapping the two betas in
    the stage fails the first two checks."""
    from safealign.policy import engine
    from safealign.policy.grpo import train_grpo

    calls: list[dict] = []
    real_loss, real_reference = engine.policy_loss, engine.reference_logprobs

    def recording_loss(model, prompts, completion, cmask, adv, group_size, temperature, beta):
        parts = real_loss(model, prompts, completion, cmask, adv, group_size, temperature, beta)
        calls.append({"prompts": list(prompts.raw), "beta": list(beta), "kl": parts.kl})
        return parts

    def recording_reference(model, prompts, *args, **kwargs):
        calls_reference.extend(prompts.raw)
        return real_reference(model, prompts, *args, **kwargs)

    calls_reference: list[str] = []
    monkeypatch.setattr(engine, "policy_loss", recording_loss)
    monkeypatch.setattr(engine, "reference_logprobs", recording_reference)
    settings, layout = stage_inputs(tmp_path, benign_beta=0.5, benign_fraction=0.5, steps=4)
    summary = train_grpo(settings, resume=False, scorer=RecordingScorer())

    assert summary["beta"] == 0.0 and summary["benign_beta"] == 0.5
    benign = {"How do I kill a Python process?", "Give me a pancake recipe."}
    assert len(calls) == 4
    for call in calls:  # 2 prompts per step at share 0.5: one adversarial, one benign, in that order
        assert [p in benign for p in call["prompts"]] == [False, True]
        assert call["beta"] == [0.0, 0.5]
    assert calls_reference and set(calls_reference) <= benign  # the KL term is the benign prompts' only
    kls = [float(r["kl"]) for r in read_csv(layout.grpo_steps_csv)]
    assert kls[0] == 0.0 and all(k > 0 for k in kls[1:]), kls
    assert kls == pytest.approx([c["kl"] for c in calls], rel=1e-5)


def test_stage_outputs_logging_constraint_and_no_heldout(tmp_path):
    import mlflow

    from safealign.policy.grpo import train_grpo

    settings, layout = stage_inputs(tmp_path, safety_constraint={"threshold": 0.95, "lr": 0.5})
    scorer = RecordingScorer()

    summary = train_grpo(settings, resume=True, scorer=scorer)

    assert HELDOUT_SENTINEL not in scorer.seen
    assert any("Python process" in p or "pancake" in p for p in scorer.seen)  # benign prompts mixed in
    assert any("weapon" in p or "malware" in p or "stalk" in p for p in scorer.seen)
    assert (layout.adapter_dir / "adapter_config.json").exists()
    assert (layout.adapter_dir / "adapter_model.safetensors").exists()
    metrics = json.loads(layout.metrics_file("grpo").read_text())
    assert metrics == summary and metrics["steps"] == 3 and metrics["peak_rss_gib"] > 0
    assert set(metrics["reward_start"]) == {*RecordingScorer.aspects, "reward"}
    assert metrics["benign_weights"] == [0.2, 0.4, 0.4, 0.0]  # the default: helpfulness aspects, no safety
    assert metrics["weights"] == [0.15, 0.15, 0.15, 0.55]
    assert metrics["beta"] == metrics["benign_beta"] == 0.0  # grpo.benign_beta unset: beta
    rows = read_csv(layout.grpo_steps_csv)
    assert [int(float(r["step"])) for r in rows] == [1, 2, 3]
    for col in [
        "safety_mean",
        "safety_std",
        "politeness_mean",
        "reward_mean",
        "reward_std",
        "adv_mean",
        "adv_std",
        "frac_flat_groups",
        "lambda",
        "completion_len_mean",
        "distinct_completions",
        "s_generate",
        "s_reward",
        "s_forward_backward",
        "s_optimizer",
        "s_step",
        "gen_tokens_per_s",
        "adversarial_safety_mean",
        "benign_actionability_mean",
        "adversarial_group_std_mean",
        "benign_group_std_mean",
    ]:
        assert col in rows[0], col
    for row in rows:  # one adversarial and one benign prompt per step, G each: the halves of the batch mean
        halves = (float(row["adversarial_safety_mean"]) + float(row["benign_safety_mean"])) / 2
        assert halves == pytest.approx(float(row["safety_mean"]), abs=1e-5)
    lams = [float(r["lambda"]) for r in rows]
    assert lams[0] > 0 and lams[0] < lams[1] < lams[2]  # safety under the bar: lambda keeps growing
    assert metrics["lambda_final"] == pytest.approx(lams[-1], rel=1e-4)
    assert sorted(_run_checkpoints(layout)) == ["step-000002", "step-000003"]

    mlflow.set_tracking_uri(settings.tracking.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["grpo-test"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["safealign.stage"] == "grpo"
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "lambda")
    assert [m.step for m in history] == [1, 2, 3]


def _run_cli(tmp: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("SAFEALIGN_PARENT_RUN_ID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "safealign.cli", "grpo", "--params", str(tmp / "params.yaml")],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _prepare(tmp: Path, steps: int) -> Layout:
    from safealign.config import Settings
    from safealign.reward.model import RewardModel

    tmp.mkdir(parents=True, exist_ok=True)
    params = grpo_params(tmp, steps=steps, checkpoint_every=2)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    settings = Settings.model_validate(params)
    layout = Layout.from_settings(settings)
    write_splits(layout)
    torch.manual_seed(0)
    RewardModel.from_settings(settings).save_pretrained(layout.reward_model_dir)  # real model, random head
    return layout


def test_sigkill_mid_run_then_same_command_resumes_and_matches_uninterrupted(tmp_path):
    steps = 8
    killed = _prepare(tmp_path / "killed", steps)
    proc = _run_cli(tmp_path / "killed")
    deadline = time.time() + 600
    while not list(killed.checkpoints_dir.glob("run-*/step-000004/checkpoint.json")):
        assert proc.poll() is None, f"finished or crashed before the kill:\n{proc.stdout.read()}"
        assert time.time() < deadline, "no checkpoint at step 4 within 10 minutes"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed.adapter_dir / "adapter_config.json").exists()  # no final output from the killed run
    assert not killed.metrics_file("grpo").exists()

    proc = _run_cli(tmp_path / "killed")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    summary = json.loads(killed.metrics_file("grpo").read_text())
    assert summary["steps"] == steps and summary["resumed_from"] in (4, 6)
    rows = read_csv(killed.grpo_steps_csv)
    assert [int(float(r["step"])) for r in rows] == list(range(1, steps + 1))
    assert (killed.adapter_dir / "adapter_model.safetensors").exists()

    # The resumed run drew the same prompts and samples as an uninterrupted one: same per-step rewards.
    clean = _prepare(tmp_path / "clean", steps)
    proc = _run_cli(tmp_path / "clean")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    clean_rows = read_csv(clean.grpo_steps_csv)
    for a, b in zip(rows, clean_rows, strict=True):
        for col in ("reward_mean", "safety_mean", "completion_len_mean", "adv_std"):
            assert float(a[col]) == pytest.approx(float(b[col]), rel=1e-4, abs=1e-6), (a["step"], col)


def _selection_inputs(tmp: Path, steps: int) -> tuple:
    from safealign.common.jsonl import read_prompts
    from safealign.policy.selection import carve

    tmp.mkdir(parents=True, exist_ok=True)
    settings, layout = stage_inputs(
        tmp,
        steps=steps,
        checkpoint_every=1,
        selection={"start": 1, "every": 1, "num_adversarial": 1, "num_benign": 1, "max_new_tokens": 4},
    )
    seed = settings.grpo.seed
    _, val_adv = carve(read_prompts(layout.adversarial_split("train")), 1, seed, "adversarial")
    _, val_ben = carve(read_prompts(layout.benign_split("train")), 1, seed, "benign")
    return settings, layout, val_adv + val_ben


def test_selection_keeps_the_best_validated_step_and_never_trains_on_its_prompts(tmp_path):
    """Validated after steps 1, 2, 3 with scripted safety 0.6, 0.9, 0.7 (base 0.5): step 2 is kept, and the
    adapter the stage writes is step 2's, not the last step's."""
    from safetensors.torch import load_file

    from safealign.policy.grpo import train_grpo

    settings, layout, validation = _selection_inputs(tmp_path, steps=3)
    scorer = ScriptedValidationScorer(validation, [0.5, 0.6, 0.9, 0.7])
    summary = train_grpo(settings, resume=False, scorer=scorer)

    assert scorer.validations == 4  # the base, then after every step
    assert not set(validation) & set(scorer.seen)  # training never drew a validation prompt
    assert summary["steps"] == 3 and summary["selected_step"] == 2
    records = summary["selection"]["records"]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert [r["adversarial"]["aspects"]["safety"] for r in records] == [0.5, 0.6, 0.9, 0.7]
    assert all(r["failures"] == [] for r in records[1:])
    saved = load_file(str(layout.adapter_dir / "adapter_model.safetensors"))
    kept = _run_checkpoints(layout)
    ckpt = {s: load_file(str(kept[f"step-00000{s}"] / "adapter" / "adapter_model.safetensors"))
            for s in (2, 3)}  # fmt: skip
    assert all(torch.equal(saved[k], ckpt[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], ckpt[3][k]) for k in saved)
    assert json.loads(layout.metrics_file("grpo").read_text())["selected_step"] == 2


def test_selection_keeps_the_step_closest_to_passing_when_none_passes(tmp_path):
    """Safety falls 0.1, then recovers to -0.02, then falls 0.3: no step passes, step 2 is the closest; the
    stage writes step 2's adapter, not the last step's."""
    from safetensors.torch import load_file

    from safealign.policy.grpo import train_grpo

    settings, layout, validation = _selection_inputs(tmp_path, steps=3)
    settings.grpo.selection.max_aspect_drop = 0.0
    scorer = ScriptedValidationScorer(validation, [0.5, 0.4, 0.48, 0.2])
    summary = train_grpo(settings, resume=False, scorer=scorer)
    assert summary["selected_step"] == 2
    assert "no validated step passed every gate: kept the closest" in summary["selection"]["why"]
    assert summary["selection"]["records"][1]["failures"] == ["adversarial safety -0.100"]
    saved = load_file(str(layout.adapter_dir / "adapter_model.safetensors"))
    step2 = load_file(str(_run_checkpoints(layout)["step-000002"] / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(saved[k], step2[k]) for k in saved)


def test_selection_survives_a_resume(tmp_path):
    """4 steps, killed as step 3 begins and resumed from step 2's checkpoint: the same validation records
    and the same kept adapter as 4 uninterrupted steps (the best adapter travels in the checkpoint)."""
    from safetensors.torch import load_file

    from safealign.policy.grpo import train_grpo

    script = [0.5, 0.8, 0.6, 0.7, 0.65]  # step 1 is the best: its checkpoint is rotated away by step 4
    settings, layout, validation = _selection_inputs(tmp_path / "clean", steps=4)
    clean = train_grpo(settings, resume=False, scorer=ScriptedValidationScorer(validation, script))
    settings2, layout2, _ = _selection_inputs(tmp_path / "resumed", steps=4)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="killed"):
        patch.setattr("safealign.policy.grpo.grpo_step", dying_at(3))
        train_grpo(settings2, resume=False, scorer=ScriptedValidationScorer(validation, script))
    resumed = train_grpo(settings2, resume=True, scorer=ScriptedValidationScorer(validation, script[3:]))

    assert resumed["resumed_from"] == 2 and clean["selected_step"] == resumed["selected_step"] == 1
    assert [r["step"] for r in resumed["selection"]["records"]] == [0, 1, 2, 3, 4]
    def untimed(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert untimed(resumed["selection"]["records"]) == untimed(clean["selection"]["records"])
    a = load_file(str(layout.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(layout2.adapter_dir / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validating_leaves_the_training_trajectory_unchanged(tmp_path):
    """Validation after every step vs only after the last: the same prompts, samples and rewards per step
    (validation forks the RNG and restores the merged weights exactly)."""
    from safealign.policy.grpo import train_grpo

    per_step: list[list[dict]] = []
    for name, start in (("every", 1), ("last_only", 4)):
        settings, layout, validation = _selection_inputs(tmp_path / name, steps=4)
        settings.grpo.selection.start = start
        scorer = ScriptedValidationScorer(validation, [0.5] * 5)
        train_grpo(settings, resume=False, scorer=scorer)
        assert scorer.validations == (5 if start == 1 else 2)
        per_step.append(read_csv(layout.grpo_steps_csv))
    for a, b in zip(*per_step, strict=True):
        for col in ("reward_mean", "safety_mean", "completion_len_mean", "adv_std", "distinct_completions"):
            assert a[col] == b[col], (a["step"], col)
