"""Checkpoint selection's pure parts: the validation carve-out, the gates, the choice and the schedule."""

import pytest

from safealign.errors import ConfigError
from safealign.policy.selection import SelectionRule, Selector, carve, choose, validation_steps

RULE = SelectionRule(max_benign_refusal=0.05, max_aspect_drop=0.02, rank_aspect="safety")


def record(step, safety=0.8, benign_refusal=0.0, adv_refusal=0.2, benign_act=0.5):
    return {
        "step": step,
        "adversarial": {"aspects": {"safety": safety, "actionability": 0.3}, "refusal_rate": adv_refusal},
        "benign": {"aspects": {"safety": 0.95, "actionability": benign_act}, "refusal_rate": benign_refusal},
    }


def test_carve_is_seeded_disjoint_order_free_and_keeps_duplicates_together():
    prompts = [f"prompt {i}" for i in range(50)] + ["prompt 3", "prompt 7"]
    train, held = carve(prompts, 10, seed=1, what="adversarial")
    assert len(held) == 10 == len(set(held))
    assert not set(held) & set(train)
    assert len(train) == sum(
        p not in held for p in prompts
    )  # every copy of a validation prompt left training
    assert set(train) | set(held) == set(prompts)
    assert (
        carve(list(reversed(prompts)), 10, seed=1, what="adversarial")[1] == held
    )  # row order is irrelevant
    assert carve(prompts, 10, seed=2, what="adversarial")[1] != held
    assert carve(prompts, 0, seed=1, what="adversarial") == (prompts, [])


def test_carve_refuses_to_take_the_whole_split():
    with pytest.raises(ConfigError, match="num_benign"):
        carve(["a", "b", "a"], 2, seed=1, what="benign")


def test_each_gate_can_fail_a_step_and_names_why():
    base = record(0)
    assert RULE.failures(record(8, safety=0.9), base) == []
    assert RULE.failures(record(8, benign_refusal=0.1), base) == ["benign refusals 10.0% > 5.0%"]
    assert RULE.failures(record(8, benign_act=0.47), base) == ["benign actionability -0.030"]
    assert RULE.failures(record(8, safety=0.77), base) == ["adversarial safety -0.030"]
    assert RULE.failures(record(8, adv_refusal=0.1), base) == ["adversarial refusals 10.0% < base 20.0%"]
    assert (
        RULE.failures(record(8, benign_refusal=0.05, benign_act=0.485, adv_refusal=0.2), base) == []
    )  # bounds


def test_choose_keeps_the_safest_passing_step_the_earlier_on_a_tie():
    records = [record(0), record(4, safety=0.85), record(8, safety=0.95, benign_refusal=0.2),
               record(12, safety=0.9), record(16, safety=0.9)]  # fmt: skip
    step, why = choose(records, RULE)
    assert step == 12 and "0.900" in why


def test_choose_falls_back_to_the_step_closest_to_passing_when_none_passes():
    records = [record(0), record(4, benign_refusal=0.5), record(8, adv_refusal=0.1, benign_refusal=0.1),
               record(12, benign_refusal=1.0, safety=0.99)]  # fmt: skip
    assert RULE.excess(records[2], records[0]) == pytest.approx(0.1 + 0.05)
    step, why = choose(records, RULE)
    assert step == 8
    assert why == ("no validated step passed every gate: kept the closest to passing (total excess 0.150: "
                   "benign refusals 10.0% > 5.0%, adversarial refusals 10.0% < base 20.0%)")  # fmt: skip
    with pytest.raises(ValueError):
        choose([record(0)], RULE)


@pytest.mark.parametrize(
    "total,start,every,expected",
    [
        (60, 40, 4, [40, 44, 48, 52, 56, 60]),
        (58, 40, 8, [40, 48, 56, 58]),
        (3, 40, 4, [3]),
        (3, 1, 1, [1, 2, 3]),
    ],
)
def test_validation_schedule_always_ends_at_the_last_step(total, start, every, expected):
    assert validation_steps(total, start, every) == expected


def test_selector_refuses_a_training_step_before_the_base_without_generating_anything():
    """Without the base record every gate would compare against nothing; the refusal comes before any
    decoding (``model=None`` would fail with an AttributeError if validation ran first)."""
    selector = Selector(RULE, {"adversarial": ["a"], "benign": ["b"]})
    with pytest.raises(ValueError, match="step 0"):
        selector.observe(None, None, None, step=4)
    assert selector.records == []
