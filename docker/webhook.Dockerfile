# syntax=docker/dockerfile:1
# The thaw image: runs `thaw webhook serve` in the chart's Deployment and is also the image
# of the thaw-sidecar / thaw-restore containers injected into workload pods.
# Build from the repository root:  docker build -f docker/webhook.Dockerfile -t <repo>/thaw:<tag> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY thaw ./thaw
COPY webhook ./webhook
COPY certs ./certs
COPY agent ./agent
COPY sidecar ./sidecar
RUN python -m venv /opt/thaw && /opt/thaw/bin/pip install .

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/thaw /opt/thaw
ENV PATH=/opt/thaw/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Unprivileged, read-only root filesystem friendly: nothing is written outside /tmp.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["thaw"]
CMD ["webhook", "serve", "--help"]
