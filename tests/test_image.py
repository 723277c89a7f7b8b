"""The built image, with real Docker: a second `make image` changes nothing, and the serving container
stops on SIGTERM.

Issue 31: `make image` left its build stage as a dangling 3 GB image and every `make image` / `make e2e`
gave a new image id (the safealign wheel was rebuilt with new time stamps, so its COPY missed the cache);
and `mlflow models serve` as the container's PID 1 ignored SIGTERM (the kernel drops signals a PID 1 has
no handler for), so `docker stop` waited its 10 s and killed it. Now the wheel is reproducible, the build
stage has a stable tag (IMAGE-build) and older ones are pruned, and dumb-init is the image's PID 1.

Docker and the image as in tests/test_e2e_docker.py: skipped without them, a failure under
SAFEALIGN_E2E_REQUIRED=1 (CI).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from safealign.serving import CACHE_ENV

from helpers.docker import IMAGE  # its docker_image fixture comes from conftest's pytest_plugins
from helpers.registry import free_port as _free_port  # `registered` comes from conftest's pytest_plugins

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e]
STOP_TIMEOUT_S = 10  # docker stop's default grace period, and the bar


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def _image_id(tag: str) -> str:
    return _docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()


def _make_image() -> str:
    proc = subprocess.run(["make", "image"], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_a_second_make_image_changes_nothing_and_leaves_no_dangling_build_stage(docker_image):  # noqa: F811
    _make_image()  # the image as this tree builds it (a no-op when it is already)
    image, stage = _image_id(IMAGE), _image_id(f"{IMAGE}-build")
    out = _make_image()
    assert (_image_id(IMAGE), _image_id(f"{IMAGE}-build")) == (image, stage), out[-2000:]
    dangling = _docker("images", "-q", "--filter", "dangling=true", "--filter", "label=safealign.stage")
    assert dangling.stdout.strip() == "", dangling.stdout


def _wait_for_ping(container: str, url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip()
        if state != "true":
            raise AssertionError(f"the serving container exited: {_docker('logs', container).stderr[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as resp:  # noqa: S310 - 127.0.0.1
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no /ping answer in {timeout_s} s: {_docker('logs', container).stderr[-3000:]}")


def test_the_serving_container_stops_on_sigterm_within_10_s(docker_image, registered, tmp_path):  # noqa: F811
    """`docker stop` of `mlflow models serve` run as the image runs it (its entrypoint, dumb-init, as PID 1)
    ends the container well within the 10 s grace period, by SIGTERM, not by the SIGKILL after it."""
    import mlflow

    settings, _layout, uri = registered
    model = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{settings.promote.policy_model_name}@champion",
        dst_path=str(tmp_path / "model"), tracking_uri=uri))
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)  # the image's user is uid 10001
    port = _free_port()
    container = _docker(
        "run", "-d", "--network", "host", "-v", f"{model}:/model:ro", "-e", "HOME=/tmp",
        "-e", f"{CACHE_ENV}=/tmp/cache", IMAGE, "mlflow", "models", "serve", "-m", "/model",
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1",
    ).stdout.strip()
    try:
        _wait_for_ping(container, f"http://127.0.0.1:{port}")
        started = time.monotonic()
        _docker("stop", "-t", str(STOP_TIMEOUT_S), container, timeout=60)
        took = time.monotonic() - started
        code = int(_docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip())
        print(f"docker stop of the serving container: {took:.1f} s, exit code {code}")
        logs = _docker("logs", container).stderr[-2000:]
        assert took < STOP_TIMEOUT_S - 2 and code != 137, (took, code, logs)
    finally:
        _docker("rm", "-f", container, check=False)
