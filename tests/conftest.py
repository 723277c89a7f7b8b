"""Suite-wide isolation: tests must not leak environment variables or MLflow state into each other.

Stage code reads MLFLOW_TRACKING_URI and SAFEALIGN_PARENT_RUN_ID from the environment, and the KFP step
runtime sets them in-process; a test that ran a step would otherwise redirect every later test's runs.
"""

from __future__ import annotations

import os

import pytest

# Fixtures shared by several test files, each defined once in tests/helpers/: the team stack (stack_env,
# team_stack), the fake KFP API (kfp_server) and a tiny promoted candidate (registered).
pytest_plugins = ("helpers.stack", "helpers.kfp_server", "helpers.registry", "helpers.docker")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True)
def _isolate_environment_and_mlflow():
    saved = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "SAFEALIGN_PARENT_RUN_ID"):
        os.environ.pop(key, None)
    yield
    try:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
    except Exception:  # noqa: BLE001 - cleanup must never mask the test's own result
        pass
    os.environ.clear()
    os.environ.update(saved)
