"""grpo: GRPO + LoRA against the reward model, then ``grpo.rounds - 1`` reward refresh rounds; resumes from
its last checkpoint."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from safealign.kfp.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def grpo_op(
    data_version: str,
    params: str,
    overrides: list,
    tracking_uri: str,
    checkpoint_root: str,
    cache_dir: str,
    dataset: Input[Dataset],
    reward_model: Input[Model],
    metrics_in: Input[Dataset],
    adapter: Output[Model],
    refresh: Output[Dataset],
    stage_metrics: Output[Dataset],
    metrics: Output[Metrics],
):
    """Train the LoRA adapter. With ``checkpoint_root`` on a mounted volume, a retried step resumes from
    the last checkpoint of the same inputs (the folder is keyed on data version + params). ``refresh``
    holds the refresh rounds' new data versions (``refresh/round-N.jsonl``, empty with grpo.rounds 1) and
    ``rounds.json``: the input dataset is copied, never written to."""
    import shutil
    from pathlib import Path

    from safealign.kfp.stage import StageWorkspace, pipeline_key
    from safealign.refresh.label import REFRESH_SUBDIR
    from safealign.refresh.rounds import train_grpo_rounds

    key = pipeline_key(data_version, params, overrides)
    ws = StageWorkspace("grpo", params, overrides, tracking_uri, cache_dir=cache_dir)
    shutil.copytree(dataset.path + "/data", ws.layout.data_dir, dirs_exist_ok=True)
    ws.link(dataset.path + "/splits", ws.layout.splits_dir)
    ws.link(reward_model.path, ws.layout.reward_model_dir)
    ws.restore_metrics(metrics_in.path)
    if checkpoint_root:
        persistent = Path(checkpoint_root) / key
        persistent.mkdir(parents=True, exist_ok=True)
        ws.link(str(persistent), ws.layout.checkpoints_dir)
    ws.parent_run(key)
    train_grpo_rounds(ws.settings, resume=True)
    ws.publish(ws.layout.adapter_dir, adapter.path)
    adapter.metadata["data_version"] = data_version
    out = Path(refresh.path)
    out.mkdir(parents=True, exist_ok=True)
    if (ws.layout.data_dir / REFRESH_SUBDIR).is_dir():
        ws.publish(ws.layout.data_dir / REFRESH_SUBDIR, str(out / REFRESH_SUBDIR))
    ws.publish(ws.layout.metrics_file("rounds"), str(out / "rounds.json"))
    ws.log_metrics(metrics, ws.publish_metrics(stage_metrics.path))
