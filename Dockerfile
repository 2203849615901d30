# One image for the API, the workers and rq-dashboard; compose.yaml picks the command.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 HF_HOME=/data/hf PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY shared shared
COPY api api
COPY workers workers
COPY bin bin
COPY models.yaml ./
# CPU torch by default; for GPUs build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install "torch==2.13.0" --index-url "$TORCH_INDEX" && pip install -e . \
    && python -m workers.checkpoints --models-dir /app/models
EXPOSE 8000
CMD ["bin/api"]
