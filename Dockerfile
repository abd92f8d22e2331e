# imagegate: the OpenAI Images API gateway, as a small container.
#   docker build -t imagegate .
#   docker run -p 8080:8080 -v "$PWD/rules.yaml:/etc/imagegate/rules.yaml:ro" -e OPENAI_API_KEY imagegate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PROXY_RULES=/etc/imagegate/rules.yaml \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8080 \
    PROXY_IMAGE_DIR=/var/lib/imagegate/images

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install ".[metrics,postgres]" \
 && useradd --system --uid 10001 --home-dir /var/lib/imagegate imagegate \
 && mkdir -p /etc/imagegate /var/lib/imagegate/images \
 && chown -R imagegate /var/lib/imagegate
# The shipped rules, used when none is mounted at /etc/imagegate/rules.yaml.
COPY rules.yaml /etc/imagegate/rules.yaml

USER imagegate
EXPOSE 8080
# /healthz answers without a key in well under a millisecond.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PROXY_PORT\"]}/healthz', timeout=1)"]
# SIGTERM drains in-flight generations (server.shutdown_grace); give the container at least that long.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "proxy"]
