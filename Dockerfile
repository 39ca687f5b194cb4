# syntax=docker/dockerfile:1
#
# The murmur worker image: the package (no dev or test extras) plus examples/.
#
#   docker build -t murmur .
#   docker run --rm -e MURMUR_BROKER_URL=redis://host.docker.internal:6379 murmur
#
# Your own agents: build FROM this image and copy your module into /app, e.g.
#   FROM murmur
#   COPY app.py /app/
#   CMD ["worker", "app", "--metrics-port", "9100"]
#
# The health check asks the worker's /health on the metrics port, so keep
# `--metrics-port 9100` in the command (docs/deployment.md).

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY murmur ./murmur
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MURMUR_LOG_FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install /wheels/*.whl \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin murmur
WORKDIR /app
COPY --chown=murmur:murmur examples ./examples
USER murmur

EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/health', timeout=4)"]
# SIGTERM makes the worker stop claiming, drain in-flight tasks (up to 30 s) and exit 0;
# give it longer than that before a SIGKILL (docker stop -t 45, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["murmur"]
CMD ["worker", "examples.minimal.app", "--metrics-port", "9100"]
