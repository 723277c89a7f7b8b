"""Model weights are readable like every other output, and `generate --model` runs no code it was handed
(issue 32 case 9)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from safealign.common.atomic import atomic_dir
from safealign.errors import ConfigError
from safealign.registry.batch import local_model_folder


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_safetensors_written_in_an_output_folder_honour_the_umask(tmp_path, umask_022):
    """safetensors' save_file creates its file 0600 (through its own temporary file): the reward model,
    adapter and checkpoint weights were private while everything beside them was 0644."""
    probe = tmp_path / "probe.safetensors"
    save_file({"w": torch.zeros(2)}, str(probe))
    assert probe.stat().st_mode & 0o777 == 0o600  # the control: the library's own mode
    with atomic_dir(tmp_path / "model") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        (tmp / "sub").mkdir(mode=0o700)
        save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "head.safetensors"))
    out = tmp_path / "model"
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (out / "sub" / "head.safetensors").stat().st_mode & 0o777 == 0o644
    assert (out / "sub").stat().st_mode & 0o777 == 0o755


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["SAFEALIGN_TEST_MARK"]),))


def test_a_foreign_mlflow_folder_is_refused_without_unpickling(tmp_path, monkeypatch):
    """An MLflow pyfunc folder loads by unpickling python_model.pkl; one not written by this project is
    refused unless --allow-pickle, and the project's own policy folders load from their adapter."""
    mark = tmp_path / "code-ran"
    monkeypatch.setenv("SAFEALIGN_TEST_MARK", str(mark))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "MLmodel").write_text("flavors: {python_function: {loader_module: mlflow.pyfunc.model}}\n")
    (foreign / "python_model.pkl").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ConfigError, match="unpickles python_model.pkl"):
        local_model_folder(str(foreign), allow_pickle=False)
    assert not mark.exists()
    assert local_model_folder(str(foreign), allow_pickle=True) == str(foreign)  # the user's decision
    ours = tmp_path / "ours"
    (ours / "artifacts" / "adapter").mkdir(parents=True)
    (ours / "MLmodel").write_text("flavors: {}\n")
    (ours / "artifacts" / "adapter" / "adapter_config.json").write_text("{}")
    assert local_model_folder(str(ours), allow_pickle=False) == str(ours / "artifacts" / "adapter")
    plain = str(tmp_path / "adapter-only")  # not an MLflow folder: an adapter folder, loaded as before
    assert local_model_folder(plain, allow_pickle=False) == plain
