"""KFP components: one per stage, each a thin wrapper that calls the same library function as the CLI.

They are lightweight Python components whose ``base_image`` is the project image (which has safealign and
kfp installed, so nothing is pip-installed at run time). KFP's other flavour, a "containerized Python
component" built with ``kfp component build`` (``target_image``), cannot run under
``kfp.local.SubprocessRunner``, which the pipeline tests use; a lightweight component on the project image
runs the same code in the same container on a cluster.
"""

from safealign.kfp.components.calibrate import calibrate_op
from safealign.kfp.components.data_version import data_version_op
from safealign.kfp.components.evaluate import evaluate_op
from safealign.kfp.components.generate import generate_op
from safealign.kfp.components.grpo import grpo_op
from safealign.kfp.components.promote import promote_op
from safealign.kfp.components.train_reward import train_reward_op
from safealign.kfp.components.validate import validate_op

__all__ = [
    "calibrate_op",
    "data_version_op",
    "evaluate_op",
    "generate_op",
    "grpo_op",
    "promote_op",
    "train_reward_op",
    "validate_op",
]
