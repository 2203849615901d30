# One image per process role; compose.yaml builds both and picks each service's command.
#   docker build --target api -t modelyard-api .        # bin/api and bin/dashboard: no torch
#   docker build --target worker -t modelyard-worker .  # bin/worker: torch, transformers, the models
FROM python:3.11-slim AS base
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md models.yaml ./
COPY shared shared
COPY bin bin

FROM base AS api
COPY api api
COPY dashboard dashboard
RUN pip install -e ".[api,dashboard]"
EXPOSE 8000
CMD ["bin/api"]

FROM base AS worker
ENV HF_HOME=/data/hf
COPY workers workers
COPY bootstrap bootstrap
# CPU torch by default; for GPUs build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install "torch==2.13.0" --index-url "$TORCH_INDEX" && pip install -e ".[worker]" \
    && python -m bootstrap.checkpoints --models-dir /app/models
CMD ["bin/worker"]
