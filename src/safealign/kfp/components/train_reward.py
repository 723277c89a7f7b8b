"""train-reward: the multi-label reward regression model."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from safealign.kfp.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_reward_op(
    data_version: str,
    params: str,
    overrides: list,
    tracking_uri: str,
    dataset: Input[Dataset],
    metrics_in: Input[Dataset],
    reward_model: Output[Model],
    stage_metrics: Output[Dataset],
    metrics: Output[Metrics],
):
    """Train on the train split; publish the reward model folder (HF save_pretrained + aspect metadata)."""
    from safealign.kfp.stage import StageWorkspace, pipeline_key
    from safealign.reward.train import train_reward

    ws = StageWorkspace("train_reward", params, overrides, tracking_uri, data_dir=dataset.path + "/data")
    ws.link(dataset.path + "/splits", ws.layout.splits_dir)
    ws.restore_metrics(metrics_in.path)
    ws.parent_run(pipeline_key(data_version, params, overrides))
    train_reward(ws.settings)
    ws.publish(ws.layout.reward_model_dir, reward_model.path)
    reward_model.metadata["data_version"] = data_version
    ws.log_metrics(metrics, ws.publish_metrics(stage_metrics.path))
