"""The pipeline's own results section: measured resources of a real process tree, and the rendered table."""

from __future__ import annotations

import json
import sys

from safealign.results import main, measure, render

ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]


def _stat(base: float, aligned: float) -> dict:
    return {"base_mean": base, "aligned_mean": aligned, "abs_change": aligned - base,
            "abs_change_ci95": [aligned - base - 0.01, aligned - base + 0.01],
            "rel_change": (aligned - base) / base,
            "rel_change_ci95": [0.1, 0.4], "n": 10, "ci_excludes_zero": True}  # fmt: skip


def _behaviour(refusal: float) -> dict:
    return {
        "refusal_rate": refusal,
        "distinct_ratio": 1.0,
        "top_opening": "i'm sorry, but",
        "top_opening_share": 0.3,
    }


def _write_metrics(d) -> None:
    sets = {
        name: {
            "n": 10,
            "aspects": {a: _stat(0.5, 0.6 if a == "safety" else 0.51) for a in sorted(ASPECTS)},
            "weighted": _stat(0.5, 0.55),
            "base": _behaviour(0.1),
            "aligned": _behaviour(0.3 if name == "adversarial" else 0.05),
        }  # fmt: skip
        for name in ("adversarial", "benign")
    }
    d.mkdir(parents=True)
    (d / "evaluation.json").write_text(json.dumps({
        "aspects": ASPECTS, "weights": [0.1, 0.2, 0.3, 0.4], "sets": sets, "flags": [],
        "decoding": {"policy": "tiny", "greedy": True, "max_new_tokens": 8, "seed": 1},
        "timing_s": {"total_s": 12.0},
    }))  # fmt: skip
    (d / "grpo.json").write_text(json.dumps({"steps": 5, "wall_time_s": 50.0, "seconds_per_step_median": 9.5,
                                             "peak_rss_gib": 3.2}))  # fmt: skip
    (d / "promotion.json").write_text(json.dumps({"verdict": "refused", "gates": [
        {"gate": "safety_gain", "passed": True}, {"gate": "refusal_gain", "passed": False}]}))  # fmt: skip


def test_measure_records_the_peak_memory_of_the_child_and_passes_its_exit_code(tmp_path):
    out = tmp_path / "res.json"
    code = measure(
        [
            sys.executable,
            "-c",
            "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); raise SystemExit(7)",
        ],
        out,
    )
    res = json.loads(out.read_text())
    assert code == 7 and res["exit_code"] == 7
    assert res["peak_rss_gib"] > 0.28  # the 300 MiB the child touched
    assert res["seconds"] >= 0


def test_render_keeps_the_params_order_of_aspects_and_reports_the_verdict(tmp_path):
    _write_metrics(tmp_path / "metrics")
    text = render(tmp_path / "metrics", tmp_path / "artifacts", pipeline_seconds=600)
    assert "= 0.1/0.2/0.3/0.4" in text and "politeness/meaningfulness/actionability/safety" in text
    rows = [
        line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "0.500" in line
    ]
    assert rows[:4] == ASPECTS  # weights line up with the aspect names, not alphabetical order
    assert "| safety | 0.500 | 0.600 | +0.100 |" in text
    assert "| refusal rate, adversarial (n=10) | 10.0% | 30.0% |" in text
    assert "REFUSED" in text and "refusal_gain FAIL" in text and "pipeline part of `make run` 600 s" in text


def test_render_names_the_benign_prompts_training_reward_and_kl(tmp_path):
    _write_metrics(tmp_path / "metrics")
    plain = render(tmp_path / "metrics", tmp_path / "artifacts", pipeline_seconds=600)
    assert "benign training prompts" not in plain and "KL to the base" not in plain  # grpo.json without them
    grpo = tmp_path / "metrics" / "grpo.json"
    weights = {"weights": [0.1, 0.2, 0.3, 0.4], "benign_weights": [0.2, 0.4, 0.4, 0.0], "beta": 0.0,
               "benign_beta": 0.1}  # fmt: skip
    grpo.write_text(json.dumps({**json.loads(grpo.read_text()), **weights}))
    text = render(tmp_path / "metrics", tmp_path / "artifacts", pipeline_seconds=600)
    assert "benign training prompts 0.2/0.4/0.4/0" in text
    assert "KL to the base 0 (adversarial), 0.1 (benign)" in text


def test_render_without_an_evaluation_writes_nothing_and_exits_2(tmp_path, capsys):
    code = main(["render", "--metrics-dir", str(tmp_path / "none"), "--artifacts-dir", str(tmp_path / "art")])
    assert code == 2 and not (tmp_path / "art" / "results.md").exists()
    assert "no evaluation yet" in capsys.readouterr().err


def test_render_shows_the_validation_curve_and_the_kept_step(tmp_path):
    _write_metrics(tmp_path / "metrics")
    grpo = tmp_path / "metrics" / "grpo.json"

    def rec(step, safety, benign_refusal, failures):
        return {"step": step, "failures": failures,
                "adversarial": {"n": 40, "aspects": {"safety": safety}, "refusal_rate": 0.1},
                "benign": {"n": 60, "aspects": {"safety": 0.9}, "refusal_rate": benign_refusal}}  # fmt: skip

    selection = {"selected_step": 4, "why": "highest adversarial safety", "rule": {"rank_aspect": "safety"},
                 "records": [rec(0, 0.7, 0.05, None), rec(4, 0.8, 0.05, []),
                             rec(8, 0.9, 0.2, ["benign refusals 20.0% > 5.0%"])]}  # fmt: skip
    grpo.write_text(json.dumps({**json.loads(grpo.read_text()), "selection": selection}))
    text = render(tmp_path / "metrics", tmp_path / "artifacts")
    assert "GRPO 5 steps, kept step 4" in text
    assert "on 40 adversarial and 60 benign train prompts held out of training" in text
    assert "| **4** | 0.800 | 10.0% | 5.0% | eligible |" in text
    assert "| 8 | 0.900 | 10.0% | 20.0% | benign refusals 20.0% > 5.0% |" in text
    assert "| 0 | 0.700 | 10.0% | 5.0% | base |" in text


def test_render_shows_the_detector_figures_and_the_robustness_table_in_attack_order(tmp_path):
    _write_metrics(tmp_path / "metrics")
    path = tmp_path / "metrics" / "evaluation.json"
    doc = json.loads(path.read_text())

    def attack(base, aligned):
        return {
            "n": 4,
            "refusal_base": {"mean": base},
            "refusal_aligned": {"mean": aligned},
            "safety": {"abs_change": 0.05, "abs_change_ci95": [0.01, 0.09]},
        }

    doc["detector"] = {"heldout": {"n": 195, "precision": 0.957, "recall": 0.944, "kappa": 0.922}}
    doc["robustness"] = {
        "prompts": 4,
        "order": ["plain", "base64"],
        "attacks": {"base64": attack(0.0, 0.25), "plain": attack(0.25, 0.75)},
    }
    path.write_text(json.dumps(doc, sort_keys=True))
    text = render(tmp_path / "metrics", tmp_path / "artifacts", pipeline_seconds=None)
    assert "held-out part (195 replies): precision 0.957, recall 0.944, kappa 0.922" in text
    assert text.index("| plain | 25.0% | 75.0% | +0.050 [+0.010, +0.090] |") < text.index(
        "| base64 | 0.0% | 25.0%"
    )
