"""The runtime side of the KFP components: run one library stage inside a pipeline step.

A KFP step gets its inputs as artifact folders and must leave its outputs in other folders that KFP then
uploads. The library, on the other hand, reads and writes through ``Layout`` (data/, artifacts/, metrics/).
``StageWorkspace`` bridges the two without touching stage logic: it builds the settings from the pipeline's
``params`` and ``overrides`` parameters, points ``paths.*`` at a scratch workspace, links the input
artifacts into the places ``Layout`` expects, and after the library call copies the stage's outputs into
the output artifacts. The component functions in ``safealign.kfp.components`` stay a dozen lines each, and
the stage code is the very function the CLI calls.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from safealign.common.hashing import tree_hash
from safealign.common.layout import Layout
from safealign.common.nested import numeric_leaves
from safealign.config import Settings, load_settings
from safealign.stages import metrics_name
from safealign.tracking import PARENT_ENV

METRICS_SUBDIR = "metrics"


def data_hash(data_dir: str | Path) -> str:
    """The run-time data version of a folder: ``sha256:`` + its :func:`safealign.common.hashing.tree_hash`."""
    return "sha256:" + tree_hash(data_dir)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=False)
    else:
        shutil.copy2(src, dst)


class StageWorkspace:
    """One pipeline step's scratch workspace laid out like the project's Layout.

    ``params`` is the whole params.yaml as JSON text or a dict (a pipeline parameter), ``overrides`` dotted
    ``key=value`` strings applied on top, exactly like ``--set`` on the CLI.
    """

    def __init__(
        self,
        stage: str,
        params: str | dict[str, Any],
        overrides: list[str] | None = None,
        tracking_uri: str = "",
        data_dir: str | None = None,
        cache_dir: str = "",
        root: str | None = None,
    ) -> None:
        self.stage = stage
        if root is None:
            # Outputs are copied into KFP's artifact folders, so the scratch space goes when the step ends.
            root = tempfile.mkdtemp(prefix=f"safealign-{stage}-")
            atexit.register(shutil.rmtree, root, True)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if tracking_uri:
            # tracking.tracking_uri() lets the environment win over params: one place for the server URL.
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        params_file = self.root / "params.yaml"
        raw = json.loads(params) if isinstance(params, str) else params
        params_file.write_text(yaml.safe_dump(raw or {}, sort_keys=False), encoding="utf-8")
        paths = [
            f"paths.artifacts_dir={self.root / 'artifacts'}",
            f"paths.metrics_dir={self.root / METRICS_SUBDIR}",
            f"paths.data_dir={data_dir or self.root / 'data'}",
        ]
        if cache_dir:
            paths.append(f"paths.cache_dir={cache_dir}")
        self.settings: Settings = load_settings(params_file, [*(overrides or []), *paths])
        self.layout = Layout.from_settings(self.settings)
        self.layout.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.layout.metrics_dir.mkdir(parents=True, exist_ok=True)

    # ---- inputs ----
    def link(self, artifact_path: str, target: Path) -> None:
        """Make an input artifact appear at ``target`` (a Layout path) without copying it."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            return
        target.symlink_to(Path(artifact_path).resolve(), target_is_directory=Path(artifact_path).is_dir())

    def restore_metrics(self, metrics_artifact_path: str) -> None:
        """Bring earlier stages' metrics/*.json back (promotion reads the evaluation's metrics)."""
        src = Path(metrics_artifact_path)
        if src.is_dir():
            _copy(src, self.layout.metrics_dir)

    def parent_run(self, key: str) -> None:
        """Nest this stage's MLflow run under the pipeline's parent run, found or created by ``key``.

        The key is derived from the run's inputs (data version + params), not from the KFP run id, so the
        parent id never enters a cached step's inputs and caching stays keyed on data and params only.
        """
        import mlflow

        from safealign.tracking import configure, start_parent_run

        experiment_id = configure(self.settings)
        found = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`safealign.pipeline_key` = '{key}'",
            max_results=1,
            output_format="list",
        )
        if found:
            run_id = found[0].info.run_id
        else:
            run_id = start_parent_run(self.settings, name=f"kfp-{key[:12]}")
            mlflow.MlflowClient().set_tag(run_id, "safealign.pipeline_key", key)
        os.environ[PARENT_ENV] = run_id

    def end_parent_run(self) -> None:
        """Close the parent run: called by the pipeline's last step (promote, or calibrate on a refusal).

        A failed step leaves it open (RUNNING), which is what MLflow should show for an unfinished run.
        """
        from safealign.tracking import end_parent_run

        if os.environ.get(PARENT_ENV):
            end_parent_run(self.settings)

    # ---- outputs ----
    def publish(self, produced: Path, artifact_path: str) -> None:
        """Copy a produced file or folder to an output artifact path (KFP uploads it after the step)."""
        if not produced.exists():
            raise FileNotFoundError(f"stage {self.stage} did not produce {produced}")
        dst = Path(artifact_path)
        if produced.is_dir() and dst.is_file():
            dst.unlink()
        _copy(produced, dst)

    def publish_metrics(self, metrics_artifact_path: str) -> dict[str, float]:
        """Copy metrics/ to the chained metrics artifact; return this stage's numbers for KFP Metrics."""
        _copy(self.layout.metrics_dir, Path(metrics_artifact_path))
        own = self.layout.metrics_file(metrics_name(self.stage))
        if own.exists():
            return numeric_leaves(json.loads(own.read_text(encoding="utf-8")))
        return {}

    def log_metrics(self, metrics: Any, values: dict[str, float]) -> None:
        """Log to a KFP Metrics artifact and also write its file: KFP only keeps the metadata, and
        a cache entry whose artifact file is missing counts as a miss (kfp.local checks)."""
        for key, value in values.items():
            metrics.log_metric(key, value)
        Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics.path).write_text(json.dumps(values, indent=2, sort_keys=True), encoding="utf-8")


def calibration_html(layout: Layout, passed: bool, reason: str) -> str:
    """One self-contained HTML page for the KFP UI: the verdict, the reliability plots, the numbers."""
    import base64
    import html

    parts = [
        "<html><head><meta charset='utf-8'><title>Calibration gate</title></head><body>",
        f"<h1>Calibration gate: {'passed' if passed else 'FAILED'}</h1>",
        f"<pre>{html.escape(reason)}</pre>",
    ]
    if layout.calibration_dir.is_dir():
        for png in sorted(layout.calibration_dir.glob("*.png")):
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<h3>{html.escape(png.stem)}</h3><img src='data:image/png;base64,{data}'>")
    metrics = layout.metrics_file(metrics_name("calibrate"))
    if metrics.exists():
        parts.append(f"<h2>metrics</h2><pre>{html.escape(metrics.read_text(encoding='utf-8'))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def pipeline_key(data_version: str, params: str | dict[str, Any], overrides: list[str] | None) -> str:
    """Identify a pipeline run's inputs (what caching keys on), for the MLflow parent run."""
    blob = json.dumps([data_version, params, overrides or []], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
