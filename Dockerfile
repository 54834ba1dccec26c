# tuner on a CUDA-capable base: the worker, dashboard and mlflow services of docker-compose.yml run this image.
# torch comes from PyPI's default (CUDA) build; on a machine without a GPU the same image trains on CPU.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tuner ./tuner
RUN pip install --no-cache-dir ".[postgres,dashboard]"
COPY studies ./studies

# Study files given to `tuner run` inside the container resolve their tasks relative to here.
WORKDIR /app
CMD ["tuner", "--help"]
