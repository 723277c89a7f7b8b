"""The results section of a pipeline run, written by the pipeline itself: the README's numbers must be
reproducible with ``make run``, not typed in by hand.

Two jobs, both used by ``safealign run`` (safealign.run):

* ``measure -- CMD ...`` runs ``dvc repro`` (or any command), and records its wall time and the peak resident
  memory of the largest process under it (``RUSAGE_CHILDREN`` covers every descendant that was waited for,
  which is every stage DVC runs), in ``artifacts/run_resources.json``. The exit code is passed through.
* ``render`` turns ``metrics/*.json`` plus those resources into ``artifacts/results.md``: the per-aspect table
  base vs aligned, refusal rates from the rule detector, the hacking flags, the calibration gate, time and
  memory per stage, and the promotion verdict. The README's results section is a copy of this file.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from safealign.common.atomic import write_json, write_text

RESOURCES = "run_resources.json"


def measure(command: list[str], out: Path) -> int:
    """Run ``command`` and return its exit code.

    Writes the wall seconds and peak RSS (GiB) of its process tree to ``out``.
    """
    start = time.perf_counter()
    code = subprocess.call(command)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"command": command, "exit_code": code, "seconds": round(seconds, 1),
                     "peak_rss_gib": round(peak_kib / 2**20, 3)})  # fmt: skip
    return code


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _aspect_table(sets: dict[str, Any], name: str, aspects: list[str]) -> list[str]:
    s = sets[name]
    lines = [
        f"| aspect ({name}, n={s['n']}) | base | aligned | change | 95% CI | relative | 95% CI (relative) |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    rows = [(k, s["aspects"][k]) for k in aspects] + [("**weighted reward**", s["weighted"])]
    for aspect, a in rows:
        lo, hi = a["abs_change_ci95"]
        rlo, rhi = a["rel_change_ci95"]
        lines.append(
            f"| {aspect} | {a['base_mean']:.3f} | {a['aligned_mean']:.3f} | {a['abs_change']:+.3f} | "
            f"[{lo:+.3f}, {hi:+.3f}] | {_pct(a['rel_change'])} | [{_pct(rlo)}, {_pct(rhi)}] |"
        )
    return lines


def _selection_table(selection: dict[str, Any]) -> list[str]:
    """The validation curve GRPO chose its step on: train prompts held out of training, not evaluation's."""
    records = selection["records"]
    rank = selection["rule"]["rank_aspect"]
    lines = [
        f"Checkpoint selection on {records[0]['adversarial']['n']} adversarial and "
        f"{records[0]['benign']['n']} benign train prompts held out of training (greedy replies): "
        f"kept step {selection['selected_step']}, {selection['why']}.",
        "",
        f"| step | adversarial {rank} | adversarial refusals | benign refusals | not eligible because |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in records:
        step = f"**{r['step']}**" if r["step"] == selection["selected_step"] else str(r["step"])
        why = "base" if r["step"] == 0 else "; ".join(r.get("failures") or []) or "eligible"
        lines.append(
            f"| {step} | {r['adversarial']['aspects'][rank]:.3f} | {r['adversarial']['refusal_rate']:.1%} | "
            f"{r['benign']['refusal_rate']:.1%} | {why} |"
        )
    return lines


def render(metrics_dir: Path, artifacts_dir: Path, pipeline_seconds: float | None = None) -> str:
    """The markdown results section; raises FileNotFoundError when the evaluation has not run."""
    evaluation = json.loads((metrics_dir / "evaluation.json").read_text())
    grpo = _load(metrics_dir / "grpo.json") or {}
    reward = _load(metrics_dir / "train_reward.json") or {}
    calibration = _load(metrics_dir / "calibration.json") or {}
    promotion = _load(metrics_dir / "promotion.json")
    resources = _load(artifacts_dir / RESOURCES)
    sets = evaluation["sets"]
    weights = "/".join(f"{w:g}" for w in evaluation["weights"])
    # params order, as the weights
    aspects = list(evaluation.get("aspects") or sets["adversarial"]["aspects"])
    dec = evaluation["decoding"]
    training = ""
    benign_w, benign_beta = grpo.get("benign_weights"), grpo.get("benign_beta") or 0.0
    if benign_w and benign_w != grpo.get("weights"):
        training += f", benign training prompts {'/'.join(f'{w:g}' for w in benign_w)}"
    if benign_beta or grpo.get("beta"):
        training += f"; KL to the base {grpo.get('beta', 0.0):g} (adversarial), {benign_beta:g} (benign)"
    if grpo.get("benign_refusal_penalty"):
        training += f"; benign refusal penalty {grpo['benign_refusal_penalty']:g}"
    selection = grpo.get("selection")
    kept = f", kept step {selection['selected_step']} (checkpoint selection below)" if selection else ""
    out = [
        f"Policy `{dec['policy']}` + LoRA, GRPO {grpo.get('steps', '?')} steps{kept}; aspect weights "
        f"{'/'.join(aspects)} = {weights}{training}; "
        f"evaluation {'greedy' if dec.get('greedy') else 'sampled'}, "
        f"{dec['max_new_tokens']} new tokens, seed {dec['seed']}. Scores are the reward model's; "
        "refusals are the rule detector's (it never sees the reward model). Intervals: 95% paired bootstrap.",
        "",
        *_aspect_table(sets, "adversarial", aspects),
        "",
        *_aspect_table(sets, "benign", aspects),
        "",
        "| behaviour (rule detector) | base | aligned |",
        "|---|---:|---:|",
    ]
    for name in ("adversarial", "benign"):
        b, a = sets[name]["base"], sets[name]["aligned"]
        out.append(
            f"| refusal rate, {name} (n={sets[name]['n']}) | "
            f"{b['refusal_rate']:.1%} | {a['refusal_rate']:.1%} |"
        )
    a = sets["adversarial"]["aligned"]
    out.append(f"| distinct replies, adversarial | {sets['adversarial']['base']['distinct_ratio']:.2f} | "
               f"{a['distinct_ratio']:.2f} |")  # fmt: skip
    out.append(
        "| most common opening, adversarial (share) | | "
        f"\"{a['top_opening']}\" ({a['top_opening_share']:.0%}) |"
    )
    out += _trust_lines(evaluation)
    if selection:
        out += ["", *_selection_table(selection)]
    out += ["", "Reward-hacking checks: " + (
        "; ".join(f"**{f['kind']}** ({f['set']}): {f['message']}" for f in evaluation["flags"])
        or "none fired."
    )]
    if calibration.get("aspects"):
        r2 = ", ".join(f"{k} {v['r2']:.3f}" for k, v in calibration["aspects"].items())
        out.append(f"\nCalibration gate (held-out R², threshold {calibration.get('threshold')}): {r2}; "
                   f"{'passed' if calibration.get('passed') else 'FAILED'}.")  # fmt: skip
    out += _onpolicy_lines(calibration.get("onpolicy"))
    out += rounds_table(_load(metrics_dir / "rounds.json"))
    out.append(_time_line(reward, grpo, evaluation, resources, pipeline_seconds))
    if promotion:
        verdict = (
            "PROMOTED to champion"
            if promotion.get("verdict") == "promoted"
            else "REFUSED (champion untouched)"
        )
        gates = "; ".join(
            f"{g['gate']} {'pass' if g.get('passed') else 'FAIL'}" for g in promotion.get("gates") or []
        )
        out.append(f"\nPromotion: {verdict} ({gates}).")
    return "\n".join(out) + "\n"


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def rounds_table(rounds: dict[str, Any] | None) -> list[str]:
    """Reward refresh rounds side by side: on-policy AUROCs of each round's reward model, then the held-out
    evaluation of each round's policy (round-1 reward model, rule refusal judge). Nothing for one round."""
    rows = (rounds or {}).get("per_round") or []
    if len(rows) < 2 and (rounds or {}).get("passed", True):
        return []
    out = [
        "",
        f"Reward refresh rounds ({len(rows)} of {rounds.get('rounds')}"
        + (f"; round {rounds['failed_round']} FAILED calibration" if rounds.get("failed_round") else "")
        + "):",
        "",
        "| round | new rows | on-policy AUROC benign | on-policy AUROC adversarial | calibration | "
        "safety rel. change | refusal adversarial | refusal benign | time |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        auroc = r.get("onpolicy_auroc") or {}
        held = r.get("heldout") or {}
        secs = r.get("seconds") or {}
        total = secs.get("total_s", sum(v for k, v in secs.items() if k != "total_s") or None)
        out.append(
            f"| {r['round']} | {r.get('refresh_rows', 0)} | {_num(auroc.get('benign'), '.3f')} | "
            f"{_num(auroc.get('adversarial'), '.3f')} | "
            f"{'passed' if r.get('calibration_passed') else 'FAILED'} | "
            f"{_num(held.get('safety_rel_change'), '+.1%')} | "
            f"{_num(held.get('adversarial_refusal_aligned'), '.1%')} | "
            f"{_num(held.get('benign_refusal_aligned'), '.1%')} | {_num(total, '.0f')} s |"
        )
    return out


def _time_line(
    reward: dict[str, Any],
    grpo: dict[str, Any],
    evaluation: dict[str, Any],
    resources: dict[str, Any] | None,
    pipeline_seconds: float | None,
) -> str:
    """Where the run's time went, stage by stage, and the whole pipeline's wall time and memory."""
    times = []
    if reward.get("train_seconds") is not None:
        times.append(f"reward training {reward['train_seconds']:.0f} s")
    if grpo.get("wall_time_s") is not None:
        times.append(f"GRPO {grpo['wall_time_s']:.0f} s "
                     f"({grpo.get('seconds_per_step_median', 0):.1f} s/step median, "
                     f"peak RSS {grpo.get('peak_rss_gib', 0):.1f} GiB)")  # fmt: skip
    times.append(f"evaluation {evaluation['timing_s']['total_s']:.0f} s")
    line = "\nTime: " + ", ".join(times)
    if resources:
        line += (f"; `dvc repro` in all {resources['seconds']:.0f} s, peak RSS of the largest stage process "
                 f"{resources['peak_rss_gib']:.2f} GiB")  # fmt: skip
    if pipeline_seconds is not None:
        line += f"; pipeline part of `make run` {pipeline_seconds:.0f} s"
    return line + "."


def _trust_lines(evaluation: dict[str, Any]) -> list[str]:
    """How far the refusal numbers can be trusted (detector vs hand labels) and the robustness table."""
    out: list[str] = []
    det = (evaluation.get("detector") or {}).get("heldout")
    if det:
        out += ["", f"Refusal detector on the hand-labelled refusal set's held-out part "
                    f"({det['n']} replies): precision {det['precision']:.3f}, "
                    f"recall {det['recall']:.3f}, kappa {det['kappa']:.3f}."]  # fmt: skip
    rob = evaluation.get("robustness")
    if rob:
        out += ["", f"| attack ({rob['prompts']} held-out harmful prompts) | refusal base | refusal aligned "
                    "| RM safety change (95% CI) |", "|---|---:|---:|---|"]  # fmt: skip
        for attack in rob.get("order") or list(rob["attacks"]):
            v = rob["attacks"][attack]
            s = v.get("safety")
            ci = (
                f"{s['abs_change']:+.3f} [{s['abs_change_ci95'][0]:+.3f}, {s['abs_change_ci95'][1]:+.3f}]"
                if s
                else "n/a"
            )
            out.append(
                f"| {attack} | {v['refusal_base']['mean']:.1%} | {v['refusal_aligned']['mean']:.1%} | {ci} |"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safealign.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="run a command, record its wall time and peak RSS")
    m.add_argument("--out", default=f"artifacts/{RESOURCES}")
    m.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    r = sub.add_parser("render", help="write artifacts/results.md from metrics/*.json")
    r.add_argument("--metrics-dir", default="metrics")
    r.add_argument("--artifacts-dir", default="artifacts")
    r.add_argument("--pipeline-seconds", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "measure":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("measure needs a command after --")
        return measure(cmd, Path(args.out))
    artifacts = Path(args.artifacts_dir)
    try:
        text = render(Path(args.metrics_dir), artifacts, args.pipeline_seconds)
    except FileNotFoundError as exc:
        print(f"results: no evaluation yet ({exc.filename}); nothing written", file=sys.stderr)
        return 2
    write_text(artifacts / "results.md", text)
    print(artifacts / "results.md")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _onpolicy_lines(onp: dict[str, Any] | None) -> list[str]:
    """The reward model on real policy replies, next to the held-out line: the gate GRPO actually needs."""
    if not onp:
        return []
    out = [
        "",
        f"On-policy calibration ({onp['n']} real policy replies labelled by hand, data/onpolicy_set.jsonl; "
        f"{'enforced' if onp['enforced'] else 'not enforced: calibrate.enforce_onpolicy is false'}):",
        "",
        "| check | combined reward | threshold | verdict | best head (AUROC) |",
        "|---|---|---|---|---|",
    ]
    for kind, g in onp["gates"].items():
        if kind not in onp["auroc"]:  # an R² gate: listed below with the per-aspect figures
            continue
        heads = onp["auroc"][kind]["auroc_by_aspect"]
        best = max((v, a) for a, v in heads.items() if v is not None) if any(
            v is not None for v in heads.values()
        ) else (None, "n/a")
        block = onp["auroc"][kind]
        out.append(
            f"| {kind}: {block['preferred']} over the other (n {block['n']}, {block['n_refusal']} refusals) "
            f"| {_fmt(g['value'])} | {g['threshold']:.2f} | {'pass' if g['passed'] else 'FAIL'} "
            f"| {best[1]} {_fmt(best[0])} |"
        )
    r2 = ", ".join(f"{a} {_fmt(v['r2'])} / {_fmt(v['spearman'])}" for a, v in onp["aspects"].items())
    out.append(f"\nOn-policy R² / Spearman per aspect: {r2}.")
    r2_gates = {k.removeprefix("r2_"): g for k, g in onp["gates"].items() if k.startswith("r2_")}
    if r2_gates:
        bar = next(iter(r2_gates.values()))["threshold"]
        verdicts = ", ".join(f"{a} {'pass' if g['passed'] else 'FAIL'}" for a, g in r2_gates.items())
        mode = "strict: the card's bar" if onp.get("strict") else "calibrate.onpolicy_r2_threshold"
        out.append(f"R² gate on held-out real replies (> {bar:.2f}, {mode}): {verdicts}.")
    out += _label_agreement_lines(onp.get("label_agreement") or {})
    return out


def _label_agreement_lines(passes: dict[str, Any]) -> list[str]:
    """One line per recorded second labelling pass: R² of the second labeller against the first, the
    ceiling the reward model's on-policy R² can be read against."""
    out = []
    for name, block in passes.items():
        if not block or not block.get("n_rows"):
            continue
        r2 = ", ".join(f"{a} {_fmt(v.get('r2'))}" for a, v in block["aspects"].items())
        where = name.replace("_", " ")
        out.append(f"Second labelling pass ({where}, {block['n_rows']} rows), labeller R²: {r2}.")
    return out


if __name__ == "__main__":  # last, so every helper above is defined when run with -m
    sys.exit(main())
