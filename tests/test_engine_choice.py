"""grpo.engine=auto picks by device, the fast engine refuses CUDA and several processes, and the TRL engine's
device settings (bf16, vLLM, batch split) resolve or refuse clearly. CUDA is simulated by replacing the one
probe, ``engine_choice.cuda_available``."""

import pytest

from safealign.config import Settings
from safealign.errors import ConfigError
from safealign.policy import engine_choice


def _settings(**grpo) -> Settings:
    return Settings.model_validate({"grpo": grpo})


@pytest.fixture
def cuda(monkeypatch):
    def set_cuda(present: bool) -> None:
        monkeypatch.setattr(engine_choice, "cuda_available", lambda: present)

    return set_cuda


@pytest.mark.parametrize("present,expected", [(False, "fast"), (True, "trl")])
def test_auto_is_fast_on_cpu_and_trl_on_cuda(cuda, present, expected):
    cuda(present)
    assert engine_choice.resolve_engine(_settings()) == expected  # auto is the default
    assert engine_choice.resolve_engine(_settings(engine="trl")) == "trl"
    assert engine_choice.resolve_engine(_settings(engine="fast")) == "fast"


def test_fast_engine_refuses_cuda_and_data_parallelism(cuda, monkeypatch):
    cuda(False)
    engine_choice.check_fast_supported(_settings(engine="fast"))
    cuda(True)
    with pytest.raises(ConfigError, match="CPU only.*grpo.engine=trl.*CUDA_VISIBLE_DEVICES"):
        engine_choice.check_fast_supported(_settings(engine="fast"))
    cuda(False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="no data parallelism"):
        engine_choice.check_fast_supported(_settings(engine="fast"))


def test_fast_engine_refuses_cuda_through_the_stage(cuda):
    """`safealign grpo --set grpo.engine=fast` on a CUDA machine stops before any work, with the reason."""
    from safealign.policy.grpo import train_grpo

    cuda(True)
    with pytest.raises(ConfigError, match="CPU only"):
        train_grpo(_settings(engine="fast"))


def test_bf16_and_vllm_follow_the_device_unless_set(cuda, monkeypatch):
    cuda(False)
    assert engine_choice.use_bf16(_settings()) is False
    assert engine_choice.use_bf16(_settings(bf16=True)) is True
    assert engine_choice.use_vllm(_settings()) is False
    cuda(True)
    assert engine_choice.use_bf16(_settings()) is True
    monkeypatch.setattr(engine_choice, "vllm_importable", lambda: True)
    assert engine_choice.use_vllm(_settings()) is True
    assert engine_choice.use_vllm(_settings(use_vllm=False)) is False
    monkeypatch.setattr(engine_choice, "vllm_importable", lambda: False)
    assert engine_choice.use_vllm(_settings()) is False  # plain generate when vLLM is not installed
    with pytest.raises(ConfigError, match="vllm is not installed"):
        engine_choice.use_vllm(_settings(use_vllm=True))


def test_trl_config_follows_the_device(cuda):
    from safealign.policy.trl_engine import trl_config

    cuda(False)
    cpu = trl_config(_settings(engine="trl"), "/tmp/x", [1.0, 1.0, 1.0, 1.0], max_steps=1)
    assert cpu.use_cpu and not cpu.bf16 and not cpu.gradient_checkpointing and not cpu.use_vllm
    assert cpu.beta == 0.0 and cpu.loss_type == "grpo" and cpu.num_iterations == 1 and cpu.top_k == 0


def test_trl_batch_split_refuses_a_rest(monkeypatch):
    from safealign.policy.trl_engine import check_trl_supported

    check_trl_supported(_settings(engine="trl", micro_batch_size=8))  # 4 prompts x G=4 = 16 = 2 x 8
    with pytest.raises(ConfigError, match="micro_batch_size=5"):
        check_trl_supported(_settings(engine="trl", micro_batch_size=5))
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="over 3 processes"):
        check_trl_supported(_settings(engine="trl"))
