# One Dockerfile, two images: `api` (FastAPI; the torch-free base install) and `worker` (Celery +
# the engine: the `worker` extra, and the `eval` extra for jobs that name lm-eval tasks). torch
# goes into the worker only, installed first from the index that matches the hardware (CUDA
# wheels by default;
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU-only build).
#   docker build --target api -t spruce-api .
#   docker build --target worker -t spruce-worker .
FROM python:3.11-slim AS base

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPRUCE_DATA_DIR=/data

# /data and /cache exist in the image owned by the uid-1000 user: a named volume mounted there
# starts as a copy of the image's folder, owner included, so the worker can write its caches.
RUN useradd --create-home --uid 1000 spruce \
    && mkdir -p /data /cache \
    && chown spruce:spruce /data /cache
WORKDIR /app


FROM base AS api
COPY pyproject.toml README.md* alembic.ini ./
# spruce/ links the top-level folders in as spruce.core, spruce.api, ... (pyproject.toml).
COPY spruce ./spruce
COPY core ./core
COPY common ./common
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
RUN pip install .
USER spruce
EXPOSE 8000
# The same commands the integration tests run (tests/integration/conftest.py).
CMD ["sh", "-c", "spruce migrate && exec uvicorn spruce.api.app:create_app --factory --host 0.0.0.0 --port 8000"]


FROM base AS worker
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# torch first, in its own layer: the largest download changes least often.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md* alembic.ini ./
# spruce/ links the top-level folders in as spruce.core, spruce.api, ... (pyproject.toml).
COPY spruce ./spruce
COPY core ./core
COPY common ./common
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
RUN pip install ".[worker,eval]"
USER spruce
ENV SPRUCE_CACHE_DIR=/cache HF_HOME=/cache/huggingface
CMD ["celery", "-A", "spruce.worker.app", "worker", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO"]
