"""Resolve the data version a run trains on (never cached: it looks at the data every time)."""

from kfp import dsl

from safealign.kfp.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data_version_op(
    data_version: str, data_dir: str, params: str, overrides: list, dvc_remote_url: str, dvc_endpoint_url: str
) -> str:
    """Return the version of the data this run trains on; downstream steps take it as an input (cache key).

    With a DVC remote (a cluster run): pull data/ as DVC recorded it, by the md5 in ``data_version`` (what
    submit read from data.dvc, at a git revision if asked) or, when empty (a scheduled run), by the
    image's own data.dvc. DVC checks the pulled files against that md5, so the returned md5 is the pulled
    data's own hash: new data reruns the pipeline and unchanged data hits KFP's cache.

    Without a remote (kfp.local, one machine): ``data_version`` when given, else a hash of ``data_dir``,
    rebuilt deterministically from the packages baked into the image when it does not exist.
    """
    import tempfile
    from pathlib import Path

    from safealign.data.build import ensure_data
    from safealign.kfp.stage import StageWorkspace, data_hash

    if dvc_remote_url:
        from safealign.team.dvc_remote import Remote, dvc_md5, pull_version

        md5 = data_version or dvc_md5(Path("data.dvc").read_text(encoding="utf-8"), "the image's data.dvc")
        pull_version(md5, Path(tempfile.mkdtemp()) / "data", Remote(dvc_remote_url, dvc_endpoint_url))
        return md5
    if data_version:
        return data_version
    ensure_data(StageWorkspace("data", params, overrides, data_dir=data_dir).settings)
    return data_hash(data_dir)
