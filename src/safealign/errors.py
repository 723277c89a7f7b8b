"""Errors that map to the documented exit codes.

0 ok, 1 internal error, 2 bad input or failed data validation, 3 a gate said no.
Library code raises these; only the CLI turns them into exit codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE = 3

# When set, every `safealign` command appends {"command": ..., "exit_code": N} to this file: `safealign run`
# learns a failed stage's own exit code this way (DVC itself exits 255 for any failed stage).
EXIT_FILE_ENV = "SAFEALIGN_EXIT_FILE"


class SafealignError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_INTERNAL


class ConfigError(SafealignError):
    """params.yaml or an override is invalid (unknown key, wrong type)."""

    exit_code = EXIT_BAD_INPUT


class DataError(SafealignError):
    """Input data is missing, malformed or fails validation. The message names file, row and field."""

    exit_code = EXIT_BAD_INPUT


class GateFailed(SafealignError):
    """A gate (calibration, probes, promotion) refused; downstream must not run."""

    exit_code = EXIT_GATE


class ServiceError(SafealignError):
    """A remote service (MLflow server, judge endpoint, KFP API) is unreachable or answered badly."""

    exit_code = EXIT_INTERNAL


class ModelFolderError(SafealignError):
    """A model folder a stage reads (reward model, policy adapter) is missing, corrupt or does not match the
    settings (truncated weights, malformed config, other aspects). Bad input: the message names the file."""

    exit_code = EXIT_BAD_INPUT
