# A GPU worker: PyTorch with CUDA, the ddnm library and the Celery worker. Build from the
# repository root:  docker build -f docker/worker.Dockerfile -t ddnm-worker .
# Needs the NVIDIA container toolkit on the host; runs on the CPU without it (slowly).
# BASE_IMAGE: a Python 3.11 image (default the pinned upstream one; any Debian with Python 3.11)
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}
# PIP_FIND_LINKS: a URL of wheels that pip looks at besides PyPI, for a torch 2.13.0 build other
# than PyPI's CUDA one (a CPU wheel, say: its local version, +cpu, wins); empty: PyPI's alone
ARG PIP_FIND_LINKS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DDNM_MODEL_DIR=/models \
    DDNM_DEVICE=auto

WORKDIR /app
# the Linux x86-64 wheels of torch on PyPI are CUDA builds that bring their CUDA runtime libraries
RUN pip install --no-cache-dir torch==2.13.0
COPY docker/requirements-worker.txt /tmp/requirements-worker.txt
RUN pip install --no-cache-dir --requirement /tmp/requirements-worker.txt
COPY pyproject.toml README.md ./
COPY ddnm ddnm
COPY contract contract
COPY pipeline pipeline
COPY worker worker
# `ddnm models pull`, for an init container that downloads the checkpoint
COPY cli cli
RUN pip install --no-cache-dir --no-deps . && pip check

RUN useradd --create-home --uid 10001 ddnm && mkdir -p /models && chown ddnm /models
USER 10001
VOLUME /models
# healthy once this container's worker has its model loaded (a download can take minutes)
HEALTHCHECK --interval=15s --timeout=5s --retries=3 --start-period=600s \
    CMD ["python", "-m", "worker.health"]
CMD ["python", "-m", "worker"]
