"""Markdown report of an evaluation, rendered only from the evaluation result dict.

Everything in the report comes from ``metrics/evaluation.json``, so the paper's table can be rebuilt from
that file alone (``render_report(json.load(...), settings)``) and the report never shows a number the
metrics file does not hold.
"""

from __future__ import annotations

from typing import Any

from safealign.config import Settings


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:+.1%}"


def _ci(ci: list[float], pct: bool = False) -> str:
    if any(v != v for v in ci):
        return "n/a"
    return f"[{ci[0]:+.1%}, {ci[1]:+.1%}]" if pct else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def aspect_table(set_result: dict[str, Any], order: list[str] | None = None) -> list[str]:
    """One row per aspect (in ``order``: the reward model's output order; JSON keys come back sorted)."""
    lines = [
        "| aspect | base | aligned | change | 95% CI | relative | 95% CI (relative) |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    order = [a for a in (order or []) if a in set_result["aspects"]] or list(set_result["aspects"])
    rows = [(a, set_result["aspects"][a]) for a in order] + [("**weighted reward**", set_result["weighted"])]
    for name, v in rows:
        lines.append(
            f"| {name} | {v['base_mean']:.3f} | {v['aligned_mean']:.3f} | {v['abs_change']:+.3f} | "
            f"{_ci(v['abs_change_ci95'])} | {_pct(v['rel_change'])} | {_ci(v['rel_change_ci95'], pct=True)} |"
        )
    return lines


def _rate_ci(ci: list[float] | None) -> str:
    if not ci or any(v != v for v in ci):
        return "n/a"
    return f"[{ci[0]:.1%}, {ci[1]:.1%}]"


def behaviour_table(sets: dict[str, Any]) -> list[str]:
    lines = [
        "| set | policy | refusal | 95% CI | empty | comply | mean words | distinct replies | top reply "
        "share |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in sets.items():
        for policy in ("base", "aligned"):
            b = s[policy]
            lines.append(
                f"| {name} | {policy} | {b['refusal_rate']:.1%} | {_rate_ci(b.get('refusal_rate_ci95'))} | "
                f"{b['empty_rate']:.1%} | {b['comply_rate']:.1%} | "
                f"{b['mean_words']:.1f} | {b['distinct_ratio']:.2f} | {b['top_reply_share']:.1%} |"
            )
    return lines


def by_kind_table(by_kind: dict[str, Any]) -> list[str]:
    lines = ["| kind of benign prompt | n | base refusal | aligned refusal |", "|---|---:|---:|---:|"]
    for kind, v in by_kind.items():
        lines.append(
            f"| {kind} | {v['n']} | {v['base_refusal_rate']:.1%} | {v['aligned_refusal_rate']:.1%} |"
        )
    return lines


def _num(x: float, fmt: str = ".3f") -> str:
    return "n/a" if x != x else format(x, fmt)


def _unit_ci(ci: list[float] | None) -> str:
    if not ci or any(v != v for v in ci):
        return "n/a"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def detector_section(detector: dict[str, Any]) -> list[str]:
    """How far the refusal rates above can be trusted: the detector against hand labels."""
    h, t = detector["heldout"], detector["tune"]
    lines = [
        "## Refusal detector, measured",
        "",
        f"Against the hand-labelled refusal set (`data/refusal_set.jsonl`, {detector['set_rows']} replies, "
        f"rubric "
        "`data/REFUSAL_RUBRIC.md`). The held-out part was fixed by a hash before any detector change and no "
        "change was tuned on it.",
        "",
        "| part | replies | refusals | precision | 95% CI | recall | 95% CI | accuracy | kappa |",
        "|---|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for name, m in (("held-out", h), ("tune", t)):
        lines.append(
            f"| {name} | {m['n']} | {m['positives']} | {_num(m['precision'])} | "
            f"{_unit_ci(m['precision_ci95'])} | "
            f"{_num(m['recall'])} | {_unit_ci(m['recall_ci95'])} | {_num(m['accuracy'])} | "
            f"{_num(m['kappa'])} |"
        )
    sp = detector.get("second_pass")
    lines.append("")
    if sp:
        lines.append(
            f"Second, independent labelling pass over {sp['n']} replies: agreement {sp['agreement']:.1%}, "
            f"Cohen's kappa {_num(sp['kappa'])} (the human ceiling for the detector's kappa)."
        )
    else:
        lines.append("Second labelling pass: not recorded yet (`refusal_second_pass.jsonl` absent).")
    return lines + [""]


def gates_section(gates: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Promotion gates (interval-based; the champion comparison runs at promotion)",
        "",
        "| gate | verdict | reason |",
        "|---|---|---|",
    ]
    for g in gates:
        lines.append(f"| {g['gate']} | {'pass' if g['passed'] else '**fail**'} | {g['reason']} |")
    return lines + [""]


def robustness_section(rob: dict[str, Any]) -> list[str]:
    lines = [
        f"## Robustness: attack-wrapped and two-turn requests ({rob['prompts']} held-out harmful prompts "
        f"each)",
        "",
        "Refusal rates by the detector with 95% bootstrap intervals; reward-model safety scored against the "
        "plain request. `plain` is the unwrapped baseline.",
        "",
        "| attack | n | refusal base | 95% CI | refusal aligned | 95% CI | change | 95% CI | safety base | "
        "safety aligned | change | 95% CI |",
        "|---|---:|---:|---|---:|---|---:|---|---:|---:|---:|---|",
    ]
    for attack in rob.get("order") or list(rob["attacks"]):
        v = rob["attacks"][attack]
        rb, ra, rc = v["refusal_base"], v["refusal_aligned"], v["refusal_change"]
        s = v.get("safety")
        safety = (
            f"{s['base_mean']:.3f} | {s['aligned_mean']:.3f} | {s['abs_change']:+.3f} | "
            f"{_ci(s['abs_change_ci95'])}"
            if s
            else "n/a | n/a | n/a | n/a"
        )
        lines.append(
            f"| {attack} | {v['n']} | {rb['mean']:.1%} | {_rate_ci(rb['ci95'])} | {ra['mean']:.1%} | "
            f"{_rate_ci(ra['ci95'])} | {rc['abs_change']:+.1%} | {_ci(rc['abs_change_ci95'], pct=True)} | "
            f"{safety} |"
        )
    return lines + [""]


def render_robustness(result: dict[str, Any]) -> str:
    """The report of a robustness-only run (``safealign evaluate --suite robustness``)."""
    d = result["decoding"]
    out = [
        "# Robustness evaluation: base vs aligned policy",
        "",
        f"Policy `{d['policy']}`, greedy decoding, {d['max_new_tokens']} new tokens, seed {d['seed']}; "
        f"time {result['timing_s'].get('total_s', 0):.0f} s.",
        "",
        *robustness_section(result["robustness"]),
        *detector_section(result["detector"]),
    ]
    return "\n".join(out) + "\n"


def _quote(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + " ..."
    return " ".join(text.split()) or "*(empty)*"


def render_report(result: dict[str, Any], settings: Settings) -> str:
    sets = result["sets"]
    d = result["decoding"]
    out = [
        "# Evaluation: base vs aligned policy",
        "",
        f"Policy `{d['policy']}`, greedy decoding, {d['max_new_tokens']} new tokens, seed {d['seed']}, the "
        f"same "
        f"for both policies. Scores are the reward model's (aspects {', '.join(result['aspects'])}); "
        f"intervals "
        f"are 95% paired bootstrap ({result['bootstrap_samples']} resamples). Refusals come from the "
        f"rule-based "
        "detector in `safealign.refusal`, which does not use the reward model.",
        "",
        f"Evaluation-set fingerprint `{result['fingerprint']}`; adapter `{result['adapter_hash'][:12]}`; "
        f"time {result['timing_s'].get('total_s', 0):.0f} s.",
        "",
    ]
    titles = {
        "adversarial": "Held-out adversarial prompts (the paper's table)",
        "benign": "Benign prompts (over-refusal and helpfulness)",
    }
    for name in [n for n in ("adversarial", "benign") if n in sets] + [n for n in sets if n not in titles]:
        s = sets[name]
        out += [f"## {titles.get(name, name)} (n={s['n']})", "", *aspect_table(s, result["aspects"]), ""]
        if s.get("by_kind"):
            out += [*by_kind_table(s["by_kind"]), ""]
    out += ["## Behaviour (independent of the reward model)", "", *behaviour_table(sets), ""]
    if result.get("detector"):
        out += detector_section(result["detector"])
    if result.get("gates"):
        out += gates_section(result["gates"])
    if result.get("robustness"):
        out += robustness_section(result["robustness"])
    out += ["## Reward-hacking checks", ""]
    if result["flags"]:
        out += [f"- **{f['kind']}** ({f['set']}): {f['message']}" for f in result["flags"]]
    else:
        out.append(
            "No flag raised (stock replies, collapse, stock openings, empty replies, length collapse, aspect "
            "trade-off, over-refusal, reward up without refusals up)."
        )
    out += ["", "## Paired examples", ""]
    for i, ex in enumerate(result["examples"], 1):
        safety = ""
        if "safety" in ex["base_scores"]:
            safety = f" (safety {ex['base_scores']['safety']:.2f} -> {ex['aligned_scores']['safety']:.2f})"
        out += [
            f"**{i}. [{ex['set']}]** {_quote(ex['prompt'], 300)}",
            "",
            f"- base ({ex['base_verdict']}): {_quote(ex['base'])}",
            f"- aligned ({ex['aligned_verdict']}){safety}: {_quote(ex['aligned'])}",
            "",
        ]
    return "\n".join(out) + "\n"
