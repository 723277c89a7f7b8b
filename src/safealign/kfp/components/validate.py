"""validate: Great Expectations checks and the train/val/heldout splits."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from safealign.kfp.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_op(
    data_version: str,
    data_dir: str,
    params: str,
    overrides: list,
    tracking_uri: str,
    dvc_remote_url: str,
    dvc_endpoint_url: str,
    dataset: Output[Dataset],
    stage_metrics: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Validate data/ and publish it with its splits as one Dataset: ``data/`` (inputs) + ``splits/``.

    ``data_version`` is in KFP's cache key: same data and params, cache hit. With a DVC remote it is the
    md5 of data/ that the data-version step resolved, and this step pulls exactly that (the steps of a
    cluster run share no disk); without one, data_dir is read (and built when missing).
    A validation failure (DataError) fails the step, like exit 2 on the CLI.
    """
    from safealign.data.build import ensure_data
    from safealign.data.validate import validate_data
    from safealign.kfp.stage import StageWorkspace, pipeline_key

    ws = StageWorkspace("validate", params, overrides, tracking_uri, data_dir=data_dir or None)
    if dvc_remote_url:
        from safealign.team.dvc_remote import Remote, pull_version

        pull_version(data_version, ws.layout.data_dir, Remote(dvc_remote_url, dvc_endpoint_url))
    else:
        ensure_data(ws.settings)
    ws.parent_run(pipeline_key(data_version, params, overrides))
    validate_data(ws.settings)
    ws.publish(ws.layout.data_dir, dataset.path + "/data")
    ws.publish(ws.layout.splits_dir, dataset.path + "/splits")
    dataset.metadata["data_version"] = data_version
    # The landing page; GX's per-suite pages (gx/) are in the MLflow run, which validate_data logs.
    ws.publish(ws.layout.validation_dir / "report.html", report.path)
    ws.log_metrics(metrics, ws.publish_metrics(stage_metrics.path))
