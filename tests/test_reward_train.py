"""Reward training: the masked loss, batching, input errors (exit 2), and a K=2 run with missing labels."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from safealign.cli import main
from safealign.reward.synthetic import write_synthetic
from safealign.reward.train import length_batches, masked_mse, read_split

from helpers.tiny import TINY_ENCODER

TINY_ARGS = [
    "--set", f"reward.encoder={TINY_ENCODER}",
    "--set", "reward.learning_rate=0.003",
    "--set", "reward.epochs=6",
    "--set", "reward.patience=3",
    "--set", "reward.batch_size=16",
    "--set", "reward.freeze_layers=0",
]  # fmt: skip


def _grads(target: torch.Tensor, mask: torch.Tensor, loss_fn=masked_mse) -> torch.Tensor:
    probs = torch.full(target.shape, 0.5, requires_grad=True)
    with torch.no_grad():
        probs.copy_(torch.linspace(0.1, 0.9, target.numel()).reshape(target.shape))
    loss_fn(probs, target, mask).backward()
    return probs.grad.clone()


def _unmasked(probs, target, mask):
    return ((probs - target) ** 2).mean()


def test_masked_loss_ignores_whatever_sits_in_unlabelled_slots():
    mask = torch.tensor([[True, False, True], [True, True, False], [False, True, True], [True, False, False]])
    base = torch.tensor([[0.2, 0.0, 0.9], [0.4, 0.7, 0.0], [0.0, 0.1, 0.3], [1.0, 0.0, 0.0]])
    garbage = base.clone()
    garbage[~mask] = torch.tensor([7.0, float("nan"), -3.0, 1e6, float("inf")])
    g_base, g_garbage = _grads(base, mask), _grads(garbage, mask)
    assert torch.isfinite(g_garbage).all()
    torch.testing.assert_close(g_base, g_garbage)
    assert (g_garbage[~mask] == 0).all()
    # the same experiment without the mask: garbage changes the gradient (so the check above can fail)
    assert not torch.allclose(_grads(base, mask, _unmasked), _grads(garbage.nan_to_num(0.0), mask, _unmasked))


def test_masked_loss_value_is_the_mean_of_per_aspect_mses():
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    target = torch.tensor([[1.0, 0.0], [1.0, 9.0], [1.0, 9.0]])
    mask = torch.tensor([[True, True], [True, False], [True, False]])
    # aspect 0: three rows with error 0.25; aspect 1: one row with error 0.25 -> 0.25, not diluted by count
    assert float(masked_mse(probs, target, mask)) == pytest.approx(0.25)


def test_length_batches_cover_every_row_once_and_group_lengths():
    lengths = [random.Random(i).randint(5, 120) for i in range(500)]
    batches = length_batches(lengths, 16, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 30  # random batches of 16 would spread ~100 tokens


def test_missing_split_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train-reward", *TINY_ARGS]) == 2
    assert "labelled_train.jsonl" in capsys.readouterr().err


def test_aspect_without_any_label_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_synthetic("data", "artifacts/splits", ["politeness", "meaningfulness", "actionability", "safety"])
    path = tmp_path / "artifacts/splits/labelled_train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r["score_actionability"] = None
        r["label_source_actionability"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train-reward", *TINY_ARGS]) == 2
    assert "actionability" in capsys.readouterr().err


def test_malformed_score_names_row_and_field(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"prompt": "a", "response": "b", "score_safety": 0.5}) + "\n"
                 + json.dumps({"prompt": "a", "response": "b", "score_safety": 1.7}) + "\n")  # fmt: skip
    from safealign.errors import DataError

    with pytest.raises(DataError, match=r"row 2: field 'score_safety'"):
        read_split(p, ["safety"])


def test_k2_with_a_third_of_labels_missing_trains_and_saves(tmp_path, monkeypatch):
    """K is read from params; rows with null labels still train the aspects they do label."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(
        "aspects:\n  - {name: safety, weight: 0.6}\n  - {name: meaningfulness, weight: 0.4}\n"
    )
    write_synthetic("data", "artifacts/splits", ["safety", "meaningfulness"], unlabelled_share=0.33)
    split = read_split("artifacts/splits/labelled_train.jsonl", ["safety", "meaningfulness"])
    assert 0.2 < np.isnan(split.scores).mean() < 0.45
    assert main(["train-reward", "--params", "params.yaml", *TINY_ARGS]) == 0
    report = json.loads((tmp_path / "metrics/train_reward.json").read_text())
    assert report["aspects"] == ["safety", "meaningfulness"]
    assert all(v > 0.8 for v in report["val_r2"].values()), report["val_r2"]
    assert report["history"][0]["val_loss"] > report["best_val_loss"]
    from safealign.reward.model import RewardModel

    m = RewardModel.from_pretrained("artifacts/reward_model")
    assert m.score(["x"], ["y"]).shape == (1, 2)
    assert os.path.exists("mlflow.db")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads are ~30x slower for the tiny model."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fit_with_frozen_layers_trains_only_the_upper_part(tmp_path):
    """freeze_layers > 0 takes the cached-prefix path: frozen weights stay bit-identical, the rest moves."""
    from safealign.config import load_settings
    from safealign.reward.model import RewardModel
    from safealign.reward.train import fit

    aspects = ["safety", "meaningfulness"]
    write_synthetic(tmp_path / "data", tmp_path / "splits", aspects, pairs_per_prompt=3)
    s = load_settings(None, [f"reward.encoder={TINY_ENCODER}", "reward.freeze_layers=1",
                             "reward.epochs=2", "reward.learning_rate=0.003",
                             "reward.batch_size=16"])  # fmt: skip
    s.aspects = [{"name": a, "weight": 0.5} for a in aspects]
    model = RewardModel.from_settings(s)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = read_split(tmp_path / "splits/labelled_train.jsonl", aspects)
    val = read_split(tmp_path / "splits/labelled_val.jsonl", aspects)
    result = fit(model, train, val, s, progress=False)
    after = model.state_dict()
    assert result["frozen_layers"] == 1
    for name in ("encoder.embeddings.word_embeddings.weight", "encoder.encoder.layer.0.output.dense.weight"):
        assert torch.equal(before[name], after[name]), name
    for name in ("encoder.encoder.layer.1.output.dense.weight", "head.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert all(np.isfinite(h["val_loss"]) for h in result["history"])
