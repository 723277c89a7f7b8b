"""Documented exit codes under attack: corrupt model folders exit 2 naming the file; a full disk or a
read-only folder exits 1 with one line (the traceback only under -v); a failed final rename leaves nothing
behind; outputs are readable by the group.

The disk-full and read-only cases use a REAL tmpfs and a REAL read-only bind mount (root is not stopped by
chmod); where mounting is not permitted they are skipped and the injected-error tests below still run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from safealign.cli import environment_error, main
from safealign.common import atomic
from safealign.config import load_settings
from safealign.errors import ModelFolderError
from safealign.reward.model import HEAD_FILE, REWARD_CONFIG, RewardModel

from helpers.data import make_data
from helpers.tiny import TINY_ENCODER as TINY
from helpers.tiny import TINY_POLICY

REPO = Path(__file__).resolve().parents[1]
ASPECTS4 = [("politeness", 0.15), ("meaningfulness", 0.15), ("actionability", 0.15), ("safety", 0.55)]


def _args(tmp_path: Path, *extra: str) -> list[str]:
    sets = [
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.artifacts_dir={tmp_path / 'artifacts'}",
        f"paths.metrics_dir={tmp_path / 'metrics'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"reward.encoder={TINY}",
        *extra,
    ]
    out = ["--params", str(REPO / "params.yaml")]
    for s in sets:
        out += ["--set", s]
    return out


def _save_reward_model(folder: Path, aspects: list[tuple[str, float]]) -> None:
    settings = load_settings(None, [f"reward.encoder={TINY}", "reward.max_length=32"])
    settings.aspects = [{"name": n, "weight": w} for n, w in aspects]
    torch.manual_seed(0)
    RewardModel.from_settings(settings).save_pretrained(folder)


@pytest.fixture(scope="module")
def good_reward_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rm") / "reward_model"
    _save_reward_model(folder, ASPECTS4)
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _messages(err: str) -> list[str]:
    """The CLI's own lines on stderr (transformers' progress bars also write there)."""
    return [line for line in err.splitlines() if line.startswith("safealign:")]


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


# ---------------------------------------------------------- corrupt or mismatched reward model: exit 2


def _corrupt_model_safetensors(folder: Path) -> str:
    _truncate(folder / "model.safetensors")
    return "model.safetensors"


def _corrupt_head(folder: Path) -> str:
    _truncate(folder / HEAD_FILE)
    return HEAD_FILE


def _bad_json(folder: Path) -> str:
    (folder / REWARD_CONFIG).write_text('{"aspects": ["safety"', encoding="utf-8")
    return REWARD_CONFIG


def _weights_not_matching(folder: Path) -> str:
    meta = json.loads((folder / REWARD_CONFIG).read_text())
    meta["weights"] = meta["weights"][:2]
    (folder / REWARD_CONFIG).write_text(json.dumps(meta), encoding="utf-8")
    return REWARD_CONFIG


def _head_for_other_aspects(folder: Path) -> str:
    meta = json.loads((folder / REWARD_CONFIG).read_text())
    meta["aspects"], meta["weights"] = meta["aspects"] + ["humour"], meta["weights"] + [0.1]
    (folder / REWARD_CONFIG).write_text(json.dumps(meta), encoding="utf-8")
    return HEAD_FILE


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_model_safetensors, _corrupt_head, _bad_json, _weights_not_matching, _head_for_other_aspects],
)
def test_corrupt_reward_model_folder_exits_2_naming_the_file(tmp_path, capsys, good_reward_model, corrupt):
    import shutil

    folder = tmp_path / "artifacts" / "reward_model"
    shutil.copytree(good_reward_model, folder)
    name = corrupt(folder)
    code, err = _run(["calibrate", *_args(tmp_path)], capsys)
    assert code == 2, err
    lines = _messages(err)
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("safealign: error: ") and str(folder / name) in lines[0], err


def test_reward_model_with_three_aspects_when_four_are_configured_exits_2(tmp_path, capsys):
    folder = tmp_path / "artifacts" / "reward_model"
    _save_reward_model(folder, ASPECTS4[1:])
    with pytest.raises(ModelFolderError, match="aspects"):
        RewardModel.for_settings(folder, load_settings(None, []))
    code, err = _run(["calibrate", *_args(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert str(folder / REWARD_CONFIG) in _messages(err)[0] and "safety" in err, err
    # GRPO and evaluation load it through the same check
    from safealign.policy.reward_adapter import load_scorer

    with pytest.raises(ModelFolderError, match="retrain"):
        load_scorer(load_settings(REPO / "params.yaml", _args(tmp_path)[3::2]))


def test_corrupt_adapter_exits_2_naming_the_folder(tmp_path, capsys):
    from safealign.policy.loading import load_policy_with_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFolderError, match=str(adapter)):
        load_policy_with_adapter(TINY_POLICY, adapter, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------- disk full and read-only folders: exit 1, one line


@contextlib.contextmanager
def _mounted(target: Path, *mount_args: str):
    target.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", *mount_args, str(target)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, timeout=30)


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_full_disk_exits_1_with_one_line_and_leaves_no_temp(tmp_path, capsys):
    make_data(tmp_path / "data")
    artifacts = tmp_path / "artifacts"
    with _mounted(artifacts, "-t", "tmpfs", "-o", "size=16k", "tmpfs"):
        code, err = _run(["validate", *_args(tmp_path)], capsys)
        assert code == 1, err
        assert "Traceback" not in err and len(_messages(err)) == 1, err
        assert _messages(err)[0].startswith("safealign: error: disk full") and "No space left" in err, err
        assert _leftovers(artifacts) == []
        code, err = _run(["-v", "validate", *_args(tmp_path)], capsys)
        assert code == 1 and "Traceback" in err and "safealign: error: disk full" in err


def test_read_only_artifacts_folder_exits_1_with_one_line(tmp_path, capsys):
    make_data(tmp_path / "data")
    source, artifacts = tmp_path / "ro-source", tmp_path / "artifacts"
    source.mkdir()
    with _mounted(artifacts, "--bind", "-o", "ro", str(source)):
        if os.access(artifacts, os.W_OK) and _writable(artifacts):
            pytest.skip("the bind mount did not become read-only here")
        code, err = _run(["validate", *_args(tmp_path)], capsys)
    assert code == 1, err
    assert "Traceback" not in err and len(_messages(err)) == 1, err
    message = _messages(err)[0]
    assert message.startswith("safealign: error: cannot write") and "Read-only file system" in message, err
    assert f"{artifacts} (writing splits)" in message, err


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_environment_errors_are_recognised_through_wrappers():
    inner = OSError(errno.ENOSPC, "No space left on device", "/x/y")
    try:
        try:
            raise inner
        except OSError as exc:
            raise RuntimeError("saving failed") from exc
    except RuntimeError as wrapped:
        assert environment_error(wrapped) == (
            "disk full: /x/y (No space left on device); free space and rerun"
        )
    sqlite = environment_error(Exception("(sqlite3) database or disk is full")) or ""
    assert "database or disk is full" in sqlite
    assert environment_error(ValueError("a bug")) is None
    assert environment_error(OSError(errno.ENOENT, "No such file", "/x")) is None


# ------------------------------------------------------------------ the final rename fails


@pytest.mark.parametrize("fail_call", [1, 2])
def test_failed_final_rename_leaves_no_temp_and_keeps_the_old_output(tmp_path, monkeypatch, fail_call):
    """os.replace fails (1: moving the old output aside, 2: moving the new one in): the previous output
    stays complete and no .calibration.tmp-* / .old-* folder is left behind."""
    target = tmp_path / "artifacts" / "calibration"
    target.mkdir(parents=True)
    (target / "calibration.json").write_text("old")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == fail_call:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError), atomic.atomic_dir(target) as tmp:
        (tmp / "calibration.json").write_text("new")
    monkeypatch.undo()
    assert (target / "calibration.json").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_failed_final_rename_of_a_file_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics" / "calibration.json"
    atomic.write_json(target, {"v": 1})

    def replace(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError):
        atomic.write_json(target, {"v": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1} and _leftovers(tmp_path) == []


# ------------------------------------------------------------------ modes


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask_not_tempfiles_private_modes(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        with atomic.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights.bin").write_bytes(b"x")
        atomic.write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == file_mode
