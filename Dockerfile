# The container image: `sse-gateway serve` with the serve extra (uvloop,
# httptools) and the notify extra (redis-py), as a non-root user. The build
# stage installs the project into a virtual environment; the final stage
# copies only that environment, so no compiler, pip cache or source tree ships.
# Built and tested how: docs/container.md.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/sse-gateway
# What the package needs to build, and nothing else (see .dockerignore).
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY handlers ./handlers
COPY infra ./infra
RUN /opt/sse-gateway/bin/pip install ".[serve,notify]"

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/sse-gateway /opt/sse-gateway
ENV PATH=/opt/sse-gateway/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
# Liveness: /healthz never touches DynamoDB, so an outage does not get the
# container replaced; load balancers should use /readyz (docs/operations.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["sse-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
