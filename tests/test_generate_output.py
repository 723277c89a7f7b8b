"""`safealign generate --output` never destroys data (issue 32, case 1).

The generator is replaced by a stub that echoes prompts, so these tests exercise only how the output file
is handled: an existing file that is not this input's finished output is refused and left byte for byte;
``--output`` equal to ``--input`` is refused; progress lives in ``.NAME.partial`` and the output appears
only complete; a rerun over a finished output changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from safealign.cli import main
from safealign.config import load_settings
from safealign.errors import DataError
from safealign.registry import batch

ROWS = [{"id": i, "prompt": f"question {i}"} for i in range(5)]


@pytest.fixture()
def stub_generator(monkeypatch):
    """Replies are 'reply to <last user turn>'; counts calls so a no-op rerun can be checked."""
    calls = []

    def load(settings, model, allow_pickle=False):
        def run(chats):
            calls.append(len(chats))
            return [f"reply to {c[-1]['content']}" for c in chats]

        return run

    monkeypatch.setattr(batch, "load_generator", load)
    return calls


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(tmp_path: Path, inp: Path, out: Path) -> int:
    return main(["generate", "--params", str(tmp_path / "none.yaml"), "--model", "x", "--input", str(inp),
                 "--output", str(out)])


@pytest.fixture()
def no_params(tmp_path):
    (tmp_path / "none.yaml").write_text("{}\n", encoding="utf-8")


@pytest.mark.parametrize(
    "content",
    [
        b'{"id": 0, "prompt": "question 0", "reply": "r"}\n{"id": 1, "prompt": "question 1", "reply": "r"}\n'
        b'{"unrelated": true}',  # a JSON file whose last line has no newline (was cut as "torn")
        bytes(range(256)) * 3 + b"\n\x00\x01tail",  # a binary file, e.g. a .safetensors
        b'{"id": 0, "prompt": "question 0", "reply": "r"}\n{"id": 1, "pr',  # an older version's half output
    ],
    ids=["json", "binary", "half-output"],
)
def test_an_existing_output_is_refused_and_left_byte_for_byte(tmp_path, stub_generator, no_params, content,
                                                              capsys):
    inp = _input(tmp_path)
    out = tmp_path / "precious.safetensors"
    out.write_bytes(content)
    before = _sha(out)
    assert _cli(tmp_path, inp, out) == 2
    assert _sha(out) == before, "generate changed a file it refused"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output" in err[0] and ("move it away" in err[0] or "rename it" in err[0])
    assert stub_generator == [] and not batch.partial_path(out).exists()


def test_output_equal_to_input_is_refused(tmp_path, stub_generator, no_params, capsys):
    inp = _input(tmp_path)
    before = _sha(inp)
    assert _cli(tmp_path, inp, inp) == 2
    assert "is the input file" in capsys.readouterr().err
    assert _sha(inp) == before and stub_generator == []
    link = tmp_path / "link.jsonl"
    os.symlink(inp, link)  # the same file under another name
    assert _cli(tmp_path, inp, link) == 2 and _sha(inp) == before


def test_output_appears_only_complete_and_a_rerun_changes_nothing(tmp_path, stub_generator):
    settings = load_settings(None, [])
    inp, out = _input(tmp_path), tmp_path / "out.jsonl"
    summary = batch.generate(settings, "x", inp, out, chunk=2)
    assert summary["generated"] == len(ROWS) and not batch.partial_path(out).exists()
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in written] == [r["id"] for r in ROWS]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    before, calls = _sha(out), len(stub_generator)
    again = batch.generate(settings, "x", inp, out)
    assert again["generated"] == 0 and _sha(out) == before and len(stub_generator) == calls


def test_a_killed_run_resumes_from_its_partial_file(tmp_path, stub_generator):
    settings = load_settings(None, [])
    inp, out = _input(tmp_path), tmp_path / "out.jsonl"
    partial = batch.partial_path(out)
    partial.write_text(json.dumps({**ROWS[0], "reply": "kept"}) + "\n" + '{"id": 1, "pro', encoding="utf-8")
    summary = batch.generate(settings, "x", inp, out)
    assert summary["skipped"] == 1 and summary["generated"] == len(ROWS) - 1
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written[0]["reply"] == "kept" and [r["id"] for r in written] == [r["id"] for r in ROWS]


def test_a_partial_file_of_another_input_is_refused_untouched(tmp_path, stub_generator):
    settings = load_settings(None, [])
    inp, out = _input(tmp_path), tmp_path / "out.jsonl"
    partial = batch.partial_path(out)
    partial.write_bytes(b'{"id": 77, "prompt": "other", "reply": "r"}\n{"id": 78, "pr')
    before = _sha(partial)
    with pytest.raises(DataError, match="does not match input row 1"):
        batch.generate(settings, "x", inp, out)
    assert _sha(partial) == before and not out.exists()


def test_rename_no_replace_never_clobbers(tmp_path):
    from safealign.common.atomic import rename_no_replace

    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("new")
    dst.write_text("theirs")
    with pytest.raises(FileExistsError):
        rename_no_replace(src, dst)
    assert dst.read_text() == "theirs" and src.exists()
    dst.unlink()
    rename_no_replace(src, dst)
    assert dst.read_text() == "new" and not src.exists()


def _umask() -> int:
    from safealign.common.atomic import current_umask

    return current_umask()


def test_an_empty_output_file_is_filled(tmp_path, stub_generator):
    """An empty file holds nothing to lose (KFP may create an output artifact's file up front)."""
    settings = load_settings(None, [])
    inp, out = _input(tmp_path), tmp_path / "out.jsonl"
    out.touch()
    assert batch.generate(settings, "x", inp, out)["generated"] == len(ROWS)
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(ROWS)
