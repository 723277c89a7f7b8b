"""Issue 32: every command writes its outputs by temporary file and rename, so a write that fails part way
(a full disk, a value that cannot be serialised, a kill) leaves the previous file as it was.

These are the writers that wrote their file in place before (docs/failure-modes.md lists the audit): the
KFP compiler behind `safealign pipeline compile` (and `python -m safealign.kfp.pipeline`), the refusal-set
writer (data build, scripts/write_register_set.py), the per-register reports (`python -m
safealign.reward.registers --output`, `python -m safealign.evaluation.registers --output`) and the shipped
refusal classifier (`python -m safealign.evaluation.registers --build`). Each test makes the write fail
where the old code had already truncated the target.
"""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = '{"previous": "a file written by an earlier run"}\n'


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@contextlib.contextmanager
def _full_disk(folder: Path, previous: str):
    """A 64 KiB tmpfs at ``folder`` holding ``folder/previous.json`` (``previous``) and a filler that takes
    every free byte, so any further write fails with ENOSPC. Skips where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        target = folder / "previous.json"
        target.write_text(previous)
        with open(folder / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 1024)
        yield target
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)


def test_pipeline_compile_failing_part_way_keeps_the_previous_file(tmp_path, monkeypatch):
    """KFP opens --output, writes its header comments, then dumps the spec: a full disk during the dump
    left a truncated pipeline where the previous one was (mutation-checked: compiling in place fails)."""
    from kfp.compiler import pipeline_spec_builder

    from safealign.kfp.client import compile_pipeline

    class FullDiskYaml:
        @staticmethod
        def dump_all(documents, stream, **kwargs):
            stream.write("pipelineInfo:\n  name: al")
            raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "align.yaml"
    out.write_text(PREVIOUS)
    monkeypatch.setattr(pipeline_spec_builder, "yaml", FullDiskYaml)
    with pytest.raises(OSError, match="No space left"):
        compile_pipeline(out)
    assert out.read_text() == PREVIOUS and _leftovers(tmp_path) == []
    monkeypatch.undo()
    compile_pipeline(out)  # and a compile that works replaces it whole
    assert out.read_text().startswith("# PIPELINE DEFINITION") and _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match=f"output path {tmp_path / 'align.txt'} should end"):
        compile_pipeline(tmp_path / "align.txt")  # KFP's check, naming the path given, not a temporary
    assert _leftovers(tmp_path) == [] and not (tmp_path / "align.txt").exists()


def test_refusal_set_writer_failing_on_a_row_keeps_the_previous_file(tmp_path):
    """A row without a field fails part way: the rows before it used to be all that was left."""
    from safealign.data import refusal_set

    target = tmp_path / "refusal_set.jsonl"
    target.write_text(PREVIOUS)
    good = {f: f"value of {f}" for f in refusal_set.FIELDS}
    with pytest.raises(KeyError):
        refusal_set.write(target, [good, {"id": "no other field"}])
    assert target.read_text() == PREVIOUS and _leftovers(tmp_path) == []
    refusal_set.write(target, [good])
    assert [json.loads(line) for line in target.read_text().splitlines()] == [good]


def test_reward_register_report_that_cannot_be_serialised_keeps_the_previous_file(tmp_path, monkeypatch):
    """`python -m safealign.reward.registers --output F` streamed json.dump into F: a value JSON cannot
    hold (here a set) left half a report where the previous one was (mutation-checked)."""
    from safealign.reward import registers
    from safealign.reward.model import RewardModel

    class Model:
        aspects = ["politeness", "meaningfulness", "actionability", "safety"]

    monkeypatch.chdir(REPO)  # the settings are read from ./params.yaml
    monkeypatch.setattr(RewardModel, "for_settings", classmethod(lambda cls, folder, settings: Model()))
    monkeypatch.setattr(registers, "score_registers", lambda model, benign: {"bar": 0.5, "oops": {1, 2}})
    monkeypatch.setattr(registers, "format_lines", lambda report: "table")
    out = tmp_path / "registers.json"
    out.write_text(PREVIOUS)
    with pytest.raises(TypeError, match="not JSON serializable"):
        registers.main(["--model", str(tmp_path), "--output", str(out)])
    assert out.read_text() == PREVIOUS and _leftovers(tmp_path) == []
    monkeypatch.setattr(registers, "score_registers", lambda model, benign: {"bar": 0.5})
    assert registers.main(["--model", str(tmp_path), "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == {"bar": 0.5}


def test_refusal_classifier_saved_on_a_full_disk_keeps_the_previous_file(tmp_path):
    """`registers --build` saves the shipped classifier with CombinedDetector.save: Path.write_text
    truncated it first, so a full disk left an empty or partial classifier (mutation-checked)."""
    from safealign.refusal import learned

    detector = learned.shipped()
    with _full_disk(tmp_path / "disk", PREVIOUS) as target:
        with pytest.raises(OSError) as caught:
            detector.save(target)
        assert caught.value.errno == errno.ENOSPC
        assert target.read_text() == PREVIOUS and _leftovers(target.parent) == []


def test_evaluation_register_report_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    """`python -m safealign.evaluation.registers --output F` (the measurement itself stubbed: only the
    write is under test) on a full disk (mutation-checked)."""
    from safealign.evaluation import registers

    result = {"summary": {"n": 1}, "registers": {}, "rows": ["a reply long enough to need a block"] * 400}
    monkeypatch.setattr(registers, "evaluation_rows", lambda: [])
    monkeypatch.setattr(registers, "features", lambda rows: (None, None))
    monkeypatch.setattr(registers, "leave_one_register_out", lambda rows, emb, rules: dict(result))
    monkeypatch.setattr(registers, "throughput", lambda replies, det: {"rules_per_s": 1.0})
    monkeypatch.setattr(registers.learned, "shipped", lambda: None)
    monkeypatch.setattr(registers, "format_table", lambda res: "table")
    with _full_disk(tmp_path / "disk", PREVIOUS) as target:
        with pytest.raises(OSError) as caught:
            registers.main(["--output", str(target)])
        assert caught.value.errno == errno.ENOSPC
        assert target.read_text() == PREVIOUS and _leftovers(target.parent) == []
