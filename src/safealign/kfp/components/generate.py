"""generate: batch inference with the newly promoted champion, an optional step after promotion."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from safealign.kfp.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def generate_op(
    params: str,
    overrides: list,
    tracking_uri: str,
    model_uri: str,
    input_path: str,
    cache_dir: str,
    replies: Output[Dataset],
) -> int:
    """Reply to every row of ``input_path`` (JSONL on a volume the step mounts) with ``model_uri``; the
    replies are the step's output artifact. Returns the number of rows."""
    from safealign.kfp.stage import StageWorkspace
    from safealign.registry.batch import generate

    ws = StageWorkspace("generate", params, overrides, tracking_uri, cache_dir=cache_dir)
    result = generate(ws.settings, model_uri, input_path, replies.path)
    return int(result["rows"])
