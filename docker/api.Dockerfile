# The REST API: slim, no torch. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t ddnm-api .
FROM python:3.11-slim

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
USER ddnm
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "service"]
