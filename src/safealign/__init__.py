"""safealign: multi-objective GRPO alignment for safety and helpfulness."""

import os

__version__ = "0.1.0"

# MLflow's usage telemetry, off in every process that imports safealign (CLI, stages, KFP steps, serving),
# before any module here imports mlflow (mlflow starts its telemetry client at import). It was on outside
# pytest and CI only, so tests never saw it: it tries outbound connections (none exist in the image's
# clusters or here) and made a team run fail once in two at the grpo stage with `runs/log-batch failed
# with exception '_MLFLOW_TELEMETRY_SESSION_ID'`. setdefault: an explicit MLFLOW_DISABLE_TELEMETRY=false
# still opts in. The stack's server, the image and the pods set it too (team/stack.py, Dockerfile, k8s/).
TELEMETRY_ENV = "MLFLOW_DISABLE_TELEMETRY"
os.environ.setdefault(TELEMETRY_ENV, "true")
