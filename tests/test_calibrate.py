"""Calibration + probe gate end to end through the CLI: a learnt model passes, a shuffled-label one exits 3."""

from __future__ import annotations

import json
import os

import pytest
import torch

from safealign.cli import main
from safealign.reward.probes import ORDERINGS
from safealign.reward.synthetic import write_synthetic

ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]
TINY_ARGS = [
    "--set", "reward.encoder=tiny:all-minilm-l6-v2",
    "--set", "reward.learning_rate=0.003",
    "--set", "reward.epochs=8",
    "--set", "reward.patience=3",
    "--set", "reward.batch_size=16",
    "--set", "reward.freeze_layers=0",
]  # fmt: skip


def _world(tmp_path_factory, name: str, shuffle: bool) -> tuple[str, int, str]:
    """Write synthetic data, train a tiny model, run calibrate; return (folder, exit code, stderr text)."""
    folder = tmp_path_factory.mktemp(name)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        torch.set_num_threads(1)  # the shared 2-core machine is ~30x slower with 2 contended threads
        try:
            write_synthetic("data", "artifacts/splits", ASPECTS, seed=3, shuffle_labels=shuffle)
            assert main(["train-reward", *TINY_ARGS]) == 0
            err = folder / "stderr.txt"
            import contextlib
            import io

            buf = io.StringIO()
            with contextlib.redirect_stderr(buf):
                code = main(["calibrate", *TINY_ARGS])
            err.write_text(buf.getvalue())
        finally:
            torch.set_num_threads(threads)
    return str(folder), code, buf.getvalue()


@pytest.fixture(scope="module")
def learnt(tmp_path_factory):
    return _world(tmp_path_factory, "learnt", shuffle=False)


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    return _world(tmp_path_factory, "shuffled", shuffle=True)


def _report(folder: str) -> dict:
    with open(os.path.join(folder, "metrics", "calibration.json"), encoding="utf-8") as h:
        return json.load(h)


def test_tiny_encoder_learns_a_learnable_signal_and_passes_the_gate(learnt):
    folder, code, err = learnt
    assert code == 0, err
    report = _report(folder)
    assert report["passed"] is True and report["threshold"] == 0.75
    for aspect in ASPECTS:
        stats = report["aspects"][aspect]
        assert stats["r2"] > 0.9, (aspect, stats)
        assert stats["n"] > 0 and stats["mae"] < 0.1 and stats["spearman"] > 0
    for aspect in ASPECTS:
        assert (
            os.path.getsize(os.path.join(folder, "artifacts", "calibration", f"reliability_{aspect}.png"))
            > 1000
        )


def test_learnt_model_passes_every_probe_ordering(learnt):
    folder, code, _ = learnt
    probes = _report(folder)["probes"]
    assert len(probes) == len(ORDERINGS)
    for name, result in probes.items():
        assert result["n"] > 0, name
        assert result["pass_rate"] >= 0.9, (name, result)


def test_noise_labels_fail_the_gate_with_exit_3_and_a_table(shuffled):
    folder, code, err = shuffled
    assert code == 3
    assert "aspects at or below R² 0.75" in err
    report = _report(folder)  # written even when refused, so the numbers are there to read
    assert report["passed"] is False
    assert set(report["failing_aspects"]) == set(ASPECTS)
    for aspect in ASPECTS:
        assert aspect in err and report["aspects"][aspect]["r2"] < 0.75


def test_weakened_model_fails_the_probe_gate_naming_orderings(shuffled):
    folder, code, err = shuffled
    assert code == 3
    report = _report(folder)
    assert report["failing_probes"], report["probes"]
    assert "probe orderings under the pass rate 0.90" in err
    for name in report["failing_probes"]:
        assert name in err
    assert "e.g. prompt:" in err  # an example pair is shown for each failing ordering


def test_calibrate_without_a_model_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["calibrate"]) == 2
    assert "train-reward" in capsys.readouterr().err
