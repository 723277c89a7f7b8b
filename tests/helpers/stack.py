"""A session-wide team stack (PostgreSQL, SeaweedFS S3, MLflow server) for tests that need real services.

Use it by naming the fixture ``team_stack`` (conftest.py imports it). It starts on free ports in a
temporary state folder, so it never touches a developer's own ``.stack/`` or another test run's, and it is
stopped when the session ends. Tests that break a service on purpose (fault tests) must leave it up:
``team_stack.up()`` restarts whatever they stopped and is a no-op otherwise.
"""

from __future__ import annotations

import glob
import shutil
from collections.abc import Iterator

import pytest


def stack_available() -> str | None:
    """Why the stack cannot run here, or None when it can."""
    if not shutil.which("initdb") and not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return "PostgreSQL is not installed (make stack-deps)"
    return None


@pytest.fixture(scope="session")
def team_stack(tmp_path_factory) -> Iterator:
    from safealign.team.stack import Ports, Stack

    reason = stack_available()
    if reason:
        pytest.fail(reason)  # a missing install step must show, never pass silently
    state = tmp_path_factory.mktemp("stack")
    stack = Stack(state, Ports.free())
    try:
        stack.up(timeout_s=180)
        yield stack
    finally:
        stack.down()
        stack.purge()


@pytest.fixture
def stack_env(team_stack, monkeypatch) -> dict[str, str]:
    """The stack's exports set in this test's environment (undone after it); returns them."""
    team_stack.up(timeout_s=180)  # a fault test before this one may have stopped a service
    env = team_stack.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
