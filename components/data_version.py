"""Resolve the data version a run trains on (never cached: it looks at the data every time)."""

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data_version_op(data_version: str, data_dir: str, params: str, overrides: list) -> str:
    """Return ``data_version`` when given (e.g. the md5 in data.dvc), else a hash of the data itself.

    A recurring run's parameters are frozen when it is created, so a scheduled run leaves the version
    empty and this step hashes the data it finds: the downstream steps take the result as an input, so
    KFP's cache hits while the data is unchanged and misses as soon as it changes. When ``data_dir`` does
    not exist it is rebuilt deterministically from the packages baked into the image (``data build``).
    """
    from safealign.data.build import ensure_data
    from safealign.kfp_stage import StageWorkspace, data_hash

    if data_version:
        return data_version
    ensure_data(StageWorkspace("data", params, overrides, data_dir=data_dir).settings)
    return data_hash(data_dir)
