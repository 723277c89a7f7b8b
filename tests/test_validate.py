"""The validate stage: strict reading, the Great Expectations suite, atomic outputs, exit code 2.

Every test builds a small data/ in tmp_path and runs the real validator (real GX, real MLflow on a
temporary sqlite store) through the CLI, so exit codes and messages are checked as a user sees them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from safealign.cli import main
from safealign.common.layout import Layout
from safealign.config import load_settings
from safealign.data import schema
from safealign.data.gx_suite import problems_from, read_split_files, run_checks, split_check

from helpers.data import N_ADV, N_BENIGN, N_LABELLED, make_data, write_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SAFEALIGN_PARENT_RUN_ID", raising=False)


def overrides(tmp_path: Path, mlflow_dir: Path, *extra: str) -> list[str]:
    return [
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.artifacts_dir={tmp_path / 'artifacts'}",
        f"paths.metrics_dir={tmp_path / 'metrics'}",
        f"tracking.tracking_uri=sqlite:///{mlflow_dir / 'mlflow.db'}",
        f"tracking.artifact_location={mlflow_dir / 'mlartifacts'}",
        *extra,
    ]


def run_validate(tmp_path: Path, mlflow_dir: Path, *extra: str) -> int:
    args = ["validate", "--params", str(REPO / "params.yaml")]
    for o in overrides(tmp_path, mlflow_dir, *extra):
        args += ["--set", o]
    return main(args)


def snapshot(tmp_path: Path) -> dict[str, bytes]:
    """Every output file of the stage, by relative path, with its bytes."""
    out = {}
    for root in ("artifacts/splits", "artifacts/validation", "metrics"):
        for f in sorted((tmp_path / root).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(tmp_path))] = f.read_bytes()
    return out


def expect_failure(tmp_path, mlflow_dir, capsys, *needles: str, extra: tuple[str, ...] = ()) -> str:
    code = run_validate(tmp_path, mlflow_dir, *extra)
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    assert not (tmp_path / "artifacts" / "splits").exists()
    assert not (tmp_path / "metrics" / "validation.json").exists()
    return err


# ---------------------------------------------------------------- good data


def test_valid_data_writes_splits_reports_metrics_and_mlflow_run(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    assert run_validate(tmp_path, mlflow_dir) == 0, capsys.readouterr().err
    settings = load_settings(REPO / "params.yaml", overrides(tmp_path, mlflow_dir))
    layout = Layout.from_settings(settings)

    def read(path):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    labelled = {s: read(layout.labelled_split(s)) for s in ("train", "val", "heldout")}
    assert sum(map(len, labelled.values())) == N_LABELLED
    assert all(labelled.values()), "every labelled split must have rows on this data"
    adversarial = {s: read(layout.adversarial_split(s)) for s in ("train", "heldout")}
    benign = {s: read(layout.benign_split(s)) for s in ("train", "heldout")}
    assert not layout.adversarial_split("val").exists() and not layout.benign_split("val").exists()
    assert sum(map(len, adversarial.values())) == N_ADV and sum(map(len, benign.values())) == N_BENIGN
    # rows are written unchanged
    assert sorted(r["id"] for rows in labelled.values() for r in rows) == sorted(
        r["id"] for r in files["labelled.jsonl"]
    )
    # no normalized prompt is on both sides of the held-out line, in any file
    held = {
        schema.normalize_prompt(r["prompt"])
        for rows in (labelled["heldout"], adversarial["heldout"], benign["heldout"])
        for r in rows
    }
    rest = {
        schema.normalize_prompt(r["prompt"])
        for rows in (labelled["train"], labelled["val"], adversarial["train"], benign["train"])
        for r in rows
    }
    assert held and rest and not held & rest
    # benign prompts split by template family: siblings never straddle the held-out line
    side = {}
    for split_name, rows in benign.items():
        for r in rows:
            side.setdefault(r["family"], set()).add(split_name)
    assert all(len(v) == 1 for v in side.values()) and len(side) == 7

    metrics = json.loads(layout.metrics_file("validation").read_text())
    assert metrics["success"] is True
    assert metrics["rows"]["labelled"] == {"total": N_LABELLED, **{s: len(v) for s, v in labelled.items()}}
    assert metrics["rows"]["adversarial"]["heldout"] == len(adversarial["heldout"])
    assert metrics["coverage"]["safety"] == 1.0
    assert 0.7 < metrics["coverage"]["politeness"] < 0.8
    assert metrics["expectations"]["unsuccessful"] == 0 and metrics["expectations"]["evaluated"] > 40

    report = json.loads((layout.validation_dir / "report.json").read_text())
    assert set(report["suites"]) == {"adversarial", "benign", "labelled", "probes", "splits"}
    gx_html = (layout.validation_dir / "gx" / "labelled.html").read_text()
    assert "expect_column_values_to_be_between" in gx_html or "values must be" in gx_html.lower()
    assert "score_safety" in gx_html
    assert "PASSED" in (layout.validation_dir / "report.html").read_text()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{mlflow_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["safealign"], filter_string="tags.`safealign.stage` = 'validate'"
    )
    ok = runs[runs["status"] == "FINISHED"]
    assert len(ok) >= 1
    assert ok.iloc[0]["metrics.validation.rows.labelled.total"] == N_LABELLED


def test_splits_are_deterministic_and_by_prompt(tmp_path, mlflow_dir):
    make_data(tmp_path / "data")
    assert run_validate(tmp_path, mlflow_dir) == 0
    first = {k: v for k, v in snapshot(tmp_path).items() if k.startswith("artifacts/splits/")}
    assert run_validate(tmp_path, mlflow_dir) == 0
    assert {k: v for k, v in snapshot(tmp_path).items() if k.startswith("artifacts/splits/")} == first
    # a labelled row and the adversarial prompt it answers share a split (val folds into train for prompts)
    settings = load_settings(REPO / "params.yaml", overrides(tmp_path, mlflow_dir))
    layout = Layout.from_settings(settings)
    adv_held = {json.loads(x)["prompt"] for x in layout.adversarial_split("heldout").read_text().splitlines()}
    lab_held = {json.loads(x)["prompt"] for x in layout.labelled_split("heldout").read_text().splitlines()}
    adversarial_prompts = {
        json.loads(x)["prompt"]
        for x in (tmp_path / "data/prompts_adversarial.jsonl").read_text().splitlines()
    }
    assert lab_held & adversarial_prompts <= adv_held


# ---------------------------------------------------------------- strict reader: each bad input


def test_malformed_json_line(tmp_path, mlflow_dir, capsys):
    make_data(tmp_path / "data")
    path = tmp_path / "data" / "labelled.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[6] = lines[6][:-5]  # cut the closing of row 7
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expect_failure(tmp_path, mlflow_dir, capsys, "labelled.jsonl row 7", "malformed JSON")


def test_wrong_encoding_names_row_and_field(tmp_path, mlflow_dir, capsys):
    make_data(tmp_path / "data")
    path = tmp_path / "data" / "prompts_benign.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace("Python", "Pyth\u00f6n")
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    expect_failure(
        tmp_path, mlflow_dir, capsys, "prompts_benign.jsonl row 4 field 'prompt'", "not valid UTF-8"
    )


def test_empty_file(tmp_path, mlflow_dir, capsys):
    make_data(tmp_path / "data")
    (tmp_path / "data" / "probes.jsonl").write_text("", encoding="utf-8")
    expect_failure(tmp_path, mlflow_dir, capsys, "probes.jsonl", "empty file")


def test_missing_file(tmp_path, mlflow_dir, capsys):
    make_data(tmp_path / "data")
    (tmp_path / "data" / "prompts_adversarial.jsonl").unlink()
    expect_failure(tmp_path, mlflow_dir, capsys, "prompts_adversarial.jsonl", "file not found")


def test_missing_column(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["labelled.jsonl"]
    del rows[11]["label_source_politeness"]
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)
    expect_failure(
        tmp_path,
        mlflow_dir,
        capsys,
        "labelled.jsonl row 12 field 'label_source_politeness'",
        "missing column",
    )


def test_score_out_of_range(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["labelled.jsonl"]
    rows[20]["score_safety"] = 1.5
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)
    expect_failure(
        tmp_path, mlflow_dir, capsys, "labelled.jsonl row 21 field 'score_safety'", "1.5 is outside [0, 1]"
    )


def test_score_nan(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["labelled.jsonl"]
    rows[30]["score_meaningfulness"] = math.nan
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)  # json.dumps writes the literal NaN
    assert "NaN" in (tmp_path / "data" / "labelled.jsonl").read_text().splitlines()[30]
    expect_failure(
        tmp_path,
        mlflow_dir,
        capsys,
        "labelled.jsonl row 31 field 'score_meaningfulness'",
        "nan is not a number",
    )


def test_two_megabyte_prompt(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["prompts_adversarial.jsonl"]
    rows[2]["prompt"] = "A" * 2_000_000
    write_rows(tmp_path / "data" / "prompts_adversarial.jsonl", rows)
    expect_failure(
        tmp_path,
        mlflow_dir,
        capsys,
        "prompts_adversarial.jsonl row 3 field 'prompt'",
        "2,000,000 characters",
        "data.max_prompt_chars",
    )


def test_wrong_type(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["labelled.jsonl"]
    rows[4]["score_politeness"] = "high"
    rows[5]["response"] = 42
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)
    err = expect_failure(
        tmp_path, mlflow_dir, capsys, "row 5 field 'score_politeness'", "row 6 field 'response'"
    )
    assert "2 problems" in err


# ---------------------------------------------------------------- Great Expectations suite


def test_duplicate_id(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["prompts_benign.jsonl"]
    rows[9]["id"] = rows[2]["id"]
    write_rows(tmp_path / "data" / "prompts_benign.jsonl", rows)
    expect_failure(
        tmp_path,
        mlflow_dir,
        capsys,
        "prompts_benign.jsonl row 3 field 'id'",
        "expect_column_values_to_be_unique",
        "rows [3, 10]",
    )


def test_null_in_required_column(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["labelled.jsonl"]
    rows[14]["prompt_kind"] = None
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)
    expect_failure(tmp_path, mlflow_dir, capsys, "labelled.jsonl row 15 field 'prompt_kind'", "not_be_null")


def test_label_source_without_score(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["labelled.jsonl"]
    row = next(i for i, r in enumerate(rows) if r["score_politeness"] is None)
    rows[row]["label_source_politeness"] = "rule"
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)
    expect_failure(
        tmp_path,
        mlflow_dir,
        capsys,
        f"labelled.jsonl row {row + 1} field 'label_source_politeness'",
        "to_be_null",
    )


def test_unknown_label_source(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["labelled.jsonl"]
    rows[1]["label_source_safety"] = "crowd"
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)
    expect_failure(tmp_path, mlflow_dir, capsys, "labelled.jsonl row 2 field 'label_source_safety'", "crowd")


def test_label_coverage_below_minimum(tmp_path, mlflow_dir, capsys):
    make_data(tmp_path / "data")
    expect_failure(
        tmp_path,
        mlflow_dir,
        capsys,
        "field 'score_politeness'",
        "need at least 90.0%",
        "data.min_label_coverage",
        extra=("data.min_label_coverage=0.9",),
    )


def test_too_few_rows(tmp_path, mlflow_dir, capsys):
    make_data(tmp_path / "data")
    expect_failure(
        tmp_path,
        mlflow_dir,
        capsys,
        "labelled.jsonl",
        f"{N_LABELLED} rows, need at least 1000",
        extra=("data.min_rows=1000",),
    )


def test_response_too_long(tmp_path, mlflow_dir, capsys):
    files = make_data(tmp_path / "data")
    rows = files["labelled.jsonl"]
    rows[3]["response"] = "x" * 101
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)
    expect_failure(
        tmp_path,
        mlflow_dir,
        capsys,
        "row 4 field 'response'",
        "data.max_response_chars",
        extra=("data.max_response_chars=100",),
    )


def test_split_check_catches_a_prompt_in_train_and_heldout(tmp_path):
    """The guard behind split_of: written split files that share a prompt across the held-out line fail."""
    paths = {}
    for label, prompts in {
        "labelled/train": ["Tell me a joke", "How do I bake bread?"],
        "labelled/heldout": ["Something else"],
        "adversarial/heldout": ["  how do I BAKE bread?"],  # same prompt after normalization
    }.items():
        paths[label] = tmp_path / f"{label.replace('/', '_')}.jsonl"
        write_rows(paths[label], [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)])
    check = split_check(read_split_files(paths), "splits")
    result = run_checks([check])["splits"]
    assert not result.success
    problems = problems_from(check, result)
    assert len(problems) == 1
    assert problems[0].field == "sides_sharing_prompt"
    assert "labelled_train.jsonl" in problems[0].file and "adversarial_heldout.jsonl" in problems[0].file
    assert problems[0].row in (1, 2)


# ---------------------------------------------------------------- a failing run keeps the last good outputs


@pytest.mark.parametrize("breakage", ["reader", "gx"])
def test_failing_run_leaves_previous_outputs_byte_identical(tmp_path, mlflow_dir, capsys, breakage):
    files = make_data(tmp_path / "data")
    assert run_validate(tmp_path, mlflow_dir) == 0
    before = snapshot(tmp_path)
    assert any("labelled_train.jsonl" in k for k in before) and "metrics/validation.json" in before
    rows = files["labelled.jsonl"]
    if breakage == "reader":
        rows[0]["score_safety"] = 1.5
    else:
        rows[1]["id"] = rows[0]["id"]
    rows.pop()  # the good run's splits would change if anything were written
    write_rows(tmp_path / "data" / "labelled.jsonl", rows)
    assert run_validate(tmp_path, mlflow_dir) == 2
    err = capsys.readouterr().err
    assert "labelled.jsonl row 1" in err or "labelled.jsonl row 2" in err
    assert snapshot(tmp_path) == before
    failed = json.loads((tmp_path / "artifacts" / "validation_failed" / "report.json").read_text())
    assert failed["success"] is False and failed["problems"]
    leftovers = [p.name for p in (tmp_path / "artifacts").iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


# ---------------------------------------------------------------- copies of held-out prompts


def _legacy_key(text: str) -> str:
    """The split key before invisible characters were removed (NFKC, case-folded, whitespace folded)."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _heldout_prompt(files: dict[str, list[dict]]) -> str:
    d = load_settings(REPO / "params.yaml").data
    return next(
        r["prompt"]
        for r in files["prompts_adversarial.jsonl"]
        if schema.split_of(r["prompt"], d.seed, d.val_fraction, d.heldout_fraction) == "heldout"
    )


def test_split_key_ignores_invisible_characters_case_and_spacing():
    base = schema.normalize_prompt("How do I bake bread?")
    for variant in (
        "How do I bake\u200b bread?",  # zero width space
        "\ufeffHow do I bake bread?",  # BOM
        "How do I ba\u00adke bread?",  # soft hyphen
        "How\u2060 do I\u200d bake\u200c bread?",  # word joiner, zero width joiner / non-joiner
        "HOW  do\u00a0I bake bread?",  # case, double and non-breaking space
        "\uff28ow do I bake bread?",  # full-width H
    ):
        assert schema.normalize_prompt(variant) == base, repr(variant)
    assert schema.normalize_prompt("How do I bake bread!") != base  # punctuation is the near-dup key's job
    near = schema.near_duplicate_key("How do I bake bread?")
    assert schema.near_duplicate_key("how dо i bäke bread!!") == near
    assert schema.near_duplicate_key("?!") != schema.near_duplicate_key("...")  # no letters: normalised form


def test_heldout_prompt_with_a_zero_width_space_stays_heldout(tmp_path, mlflow_dir, capsys, monkeypatch):
    """The attack: a held-out prompt plus U+200B added to the prompt file. Under the old key it hashed on
    its own and (for the variant chosen here) landed in train while validation passed: a held-out leak."""
    files = make_data(tmp_path / "data")
    original = _heldout_prompt(files)
    d = load_settings(REPO / "params.yaml").data
    with monkeypatch.context() as m:  # where the old key would have put each variant
        m.setattr(schema, "normalize_prompt", _legacy_key)
        variant = next(
            v
            for v in (original[:i] + "\u200b" + original[i:] for i in range(1, len(original)))
            if schema.split_of(v, d.seed, d.val_fraction, d.heldout_fraction) != "heldout"
        )
    adversarial = files["prompts_adversarial.jsonl"]  # split by prompt (benign rows go by template family)
    adversarial.append({**adversarial[0], "id": "adv-zw", "prompt": variant})
    write_rows(tmp_path / "data" / "prompts_adversarial.jsonl", adversarial)
    assert run_validate(tmp_path, mlflow_dir) == 0, capsys.readouterr().err
    layout = Layout.from_settings(load_settings(REPO / "params.yaml", overrides(tmp_path, mlflow_dir)))
    heldout_ids = [json.loads(x)["id"] for x in layout.adversarial_split("heldout").read_text().splitlines()]
    train_ids = [json.loads(x)["id"] for x in layout.adversarial_split("train").read_text().splitlines()]
    assert "adv-zw" in heldout_ids and "adv-zw" not in train_ids


def _b7ba37c_key(text: str) -> str:
    """The split key at b7ba37c: NFKC, format characters (Cf) dropped, case-folded, whitespace folded."""
    import unicodedata

    visible = "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c) != "Cf")
    return " ".join(visible.casefold().split())


LOOKALIKE_EDITS = {
    "hangul-filler": lambda p, i: p[:i] + "\u3164" + p[i:],  # renders as nothing, category Lo
    "armenian-oh": lambda p, i: p[:i] + p[i:].replace("o", "\u0585", 1),  # Armenian small oh for Latin o
    "armenian-u": lambda p, i: p[:i] + p[i:].replace("u", "\u057d", 1),  # Armenian small seh for Latin u
    "greek-and-filler": lambda p, i: p[:i] + "\uffa0" + p[i:].replace("a", "\u03b1", 1),
}


def test_split_key_folds_fillers_and_lookalike_letters():
    base = schema.normalize_prompt("How do I bake bread?")
    for variant in (
        "How do I ba\u3164ke bread?",  # Hangul filler
        "How do I bake\uffa0 bread?",  # half-width Hangul filler
        "H\u0585w do I bake bread?",  # Armenian oh
        "How do I bake bread?\ufe0f",  # variation selector
        "How do I b\u0251ke bre\u0251d?",  # Latin alpha
        "\U0001d407ow do I bake bread?",  # mathematical bold H (NFKC)
    ):
        assert schema.normalize_prompt(variant) == base, repr(variant)


@pytest.mark.parametrize("edit", sorted(LOOKALIKE_EDITS))
def test_heldout_prompt_with_lookalike_characters_stays_heldout(tmp_path, mlflow_dir, capsys, monkeypatch,
                                                                edit):
    """Issue 32 case 6: a held-out prompt with U+3164 (Hangul filler) or a Latin-looking Armenian letter
    got a new split key under b7ba37c's key and landed in adversarial_train.jsonl (exit 0): a leak."""
    files = make_data(tmp_path / "data")
    d = load_settings(REPO / "params.yaml").data
    heldout = [
        r["prompt"]
        for r in files["prompts_adversarial.jsonl"]
        if schema.split_of(r["prompt"], d.seed, d.val_fraction, d.heldout_fraction) == "heldout"
    ]
    with monkeypatch.context() as m:  # a variant b7ba37c's key put outside the held-out split
        m.setattr(schema, "normalize_prompt", _b7ba37c_key)
        variant = next(
            v
            for original in heldout
            for v in (LOOKALIKE_EDITS[edit](original, i) for i in range(1, len(original)))
            if v != original and schema.split_of(v, d.seed, d.val_fraction, d.heldout_fraction) == "train"
        )
    adversarial = files["prompts_adversarial.jsonl"]
    adversarial.append({**adversarial[0], "id": "adv-lookalike", "prompt": variant})
    write_rows(tmp_path / "data" / "prompts_adversarial.jsonl", adversarial)
    assert run_validate(tmp_path, mlflow_dir) == 0, capsys.readouterr().err
    layout = Layout.from_settings(load_settings(REPO / "params.yaml", overrides(tmp_path, mlflow_dir)))
    heldout_ids = [json.loads(x)["id"] for x in layout.adversarial_split("heldout").read_text().splitlines()]
    train_ids = [json.loads(x)["id"] for x in layout.adversarial_split("train").read_text().splitlines()]
    assert "adv-lookalike" in heldout_ids and "adv-lookalike" not in train_ids


def test_near_duplicate_of_a_heldout_prompt_in_train_fails_validation(tmp_path, mlflow_dir, capsys):
    """A copy with punctuation and a look-alike letter changed hashes on its own; the check refuses it."""
    files = make_data(tmp_path / "data")
    original = _heldout_prompt(files)
    d = load_settings(REPO / "params.yaml").data
    variant = next(
        v
        for v in (original.replace("o", "\u043e", 1) + "!" * n for n in range(1, 40))
        if schema.split_of(v, d.seed, d.val_fraction, d.heldout_fraction) != "heldout"
    )
    benign = files["prompts_benign.jsonl"]
    benign.append({**benign[0], "id": "ben-near", "prompt": variant})  # every column a benign row has
    write_rows(tmp_path / "data" / "prompts_benign.jsonl", files["prompts_benign.jsonl"])
    err = expect_failure(tmp_path, mlflow_dir, capsys, "near-duplicate", "sides_sharing_near_duplicate")
    assert "benign_train.jsonl" in err and "adversarial_heldout.jsonl" in err
    assert "'ben-near'" in err and "'adv-" in err  # the ids of both copies, to find them in data/
