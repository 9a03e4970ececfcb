# The Anteroom sidecar. nginx runs beside it (its own image or the host's).
# Pinned base: slim Debian bookworm, CPython 3.11. For reproducible builds pin
# the digest too: FROM python:3.11-slim-bookworm@sha256:<digest>.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ANTEROOM_LISTEN=0.0.0.0:8081 \
    ANTEROOM_LISTEN_PUBLIC=1 \
    ANTEROOM_WORKERS=auto \
    ANTEROOM_THEMES=/app/theme_assets

WORKDIR /app
# runtime dependencies only (no [dev] extras); the Lua scripts, templates and
# themes are package data (theme_assets/ ships as sidecar/theme_assets/)
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY theme_assets ./theme_assets
RUN pip install --no-cache-dir . \
    && rm -rf /app/sidecar /app/build \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin anteroom
COPY nginx ./nginx

USER 10001
# 8081: the gate (nginx only); 9091: admin API, dashboard and /metrics (private)
EXPOSE 8081 9091
# ready = scripts loaded and Redis answering (GET /readyz); /livez = process up
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=2)"]
# SIGTERM drains: in-flight requests finish (ANTEROOM_SHUTDOWN_TIMEOUT), then exit
STOPSIGNAL SIGTERM
# `python -m sidecar build-pages --out DIR` renders the waiting pages
CMD ["python", "-m", "sidecar"]
