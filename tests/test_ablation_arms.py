"""bench/ablation.py's safety-only arm must be a safety-only reward on every prompt, benign ones included."""

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "bench" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_safety_only_arm_weighs_safety_alone_on_adversarial_and_benign_prompts():
    ablation = _ablation()
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["grpo"]["benign_weights"] = {"meaningfulness": 0.5, "actionability": 0.5}
    arm = ablation.arm_params(base, safety_only=True)
    assert {a["name"]: a["weight"] for a in arm["aspects"]} == {
        "politeness": 0.0,
        "meaningfulness": 0.0,
        "actionability": 0.0,
        "safety": 1.0,
    }
    assert arm["grpo"]["benign_weights"] is None
    assert arm["grpo"]["selection"] is None  # selection's aspect gates would hide the safety-only damage
    multi = ablation.arm_params(base, safety_only=False)
    assert multi["grpo"].pop("selection") is None and base["grpo"].pop("selection") is not None
    assert multi == base  # otherwise the multi-aspect arm is params as given
    assert base["grpo"]["benign_weights"] == {"meaningfulness": 0.5, "actionability": 0.5}  # not mutated
