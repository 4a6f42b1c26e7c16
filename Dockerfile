# One Dockerfile, two images: `api` (FastAPI) and `worker` (Celery + the engine). Both carry torch
# because the package depends on it; torch is installed first, from the index that matches the
# hardware (CUDA wheels by default; --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# for a CPU-only build).
#   docker build --target api -t spruce-api .
#   docker build --target worker -t spruce-worker .
FROM python:3.11-slim AS base

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPRUCE_DATA_DIR=/data

RUN useradd --create-home --uid 1000 spruce
WORKDIR /app

# torch first, in its own layer: the largest download changes least often.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md* ./
COPY core ./core
COPY common ./common
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install . && mkdir -p /data && chown spruce /data

USER spruce

FROM base AS api
EXPOSE 8000
# The same commands the integration tests run (tests/integration/conftest.py).
CMD ["sh", "-c", "alembic upgrade head && exec uvicorn api.app:create_app --factory --host 0.0.0.0 --port 8000"]

FROM base AS worker
CMD ["celery", "-A", "worker.app", "worker", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO"]
