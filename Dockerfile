# The Anteroom sidecar. nginx runs beside it (its own image or the host's).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ANTEROOM_LISTEN=0.0.0.0:8081 \
    ANTEROOM_WORKERS=auto \
    ANTEROOM_THEMES=/app/theme_assets

WORKDIR /app
# dependencies first: this layer is reused until pyproject.toml changes
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# the default theme ships inside the package (sidecar/theme_assets/)
COPY theme_assets ./theme_assets
RUN pip install --no-cache-dir . && useradd --system --uid 10001 --no-create-home anteroom
COPY nginx ./nginx

USER anteroom
EXPOSE 8081 9091
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2)"
# `python -m sidecar build-pages --out DIR` renders the waiting pages
CMD ["python", "-m", "sidecar"]
