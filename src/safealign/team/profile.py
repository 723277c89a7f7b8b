"""The team profile of ``safealign run --team`` (``make run PROFILE=team``): shared services, not a laptop.

Before the pipeline: refuse to start unless MLflow is a server and a DVC remote is given (both from the
exports of ``safealign stack status --exports`` or a cluster's), so a forgotten ``eval`` never splits the
team's history into a local SQLite file; then pull data/ at the version in data.dvc, and every stage output
of dvc.lock the remote already has (a teammate's run), so DVC skips those stages. After it: push data/ and
the outputs, so the next clone pulls them. Settings are unchanged: only where things are stored differs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from safealign.errors import ConfigError
from safealign.team.dvc_remote import URL_ENV, Remote, configure, pull, push

HOW = 'eval "$(safealign stack status --exports)"   (docs/team.md)'


def prepare(say: Callable[[str], None]) -> Remote:
    """Check the exports, point DVC at the remote and pull what it has; returns the remote."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"--team needs MLFLOW_TRACKING_URI set to the team's MLflow server (got {uri!r}): {HOW}"
        )
    if not os.environ.get(URL_ENV):
        raise ConfigError(f"--team needs {URL_ENV} (the DVC remote): {HOW}")
    remote = Remote.from_env()
    assert remote is not None
    say(f"== team: MLflow {uri}, {remote.describe()}")
    configure(".", remote)
    # --allow-missing: what the remote lacks (a first run) is restored or rebuilt by the pipeline itself
    pull(".", remote, ["--allow-missing"])
    return remote


def publish(remote: Remote, say: Callable[[str], None]) -> None:
    """Push data/ and every stage output in the DVC cache to the remote."""
    push(".", remote)
    say(f"== team: pushed data/ and the stage outputs to {remote.describe()}")
