# The REST API: slim, no torch. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t ddnm-api .
# BASE_IMAGE: a Python 3.11 image (default the pinned upstream one; any Debian with Python 3.11)
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    DDNM_HOST=0.0.0.0

WORKDIR /app
COPY docker/requirements-api.txt /tmp/requirements-api.txt
RUN pip install --no-cache-dir -r /tmp/requirements-api.txt
COPY contract contract
COPY service service

RUN useradd --create-home --uid 10001 ddnm
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service"]
