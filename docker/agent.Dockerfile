# syntax=docker/dockerfile:1
# The node agent: `thaw agent run` with CRIU >= 4 and its Python bindings (pycriu).
# Debian trixie ships both as packages. The chart runs this image privileged with hostPID;
# it is the only privileged part of thaw.
# Build from the repository root:  docker build -f docker/agent.Dockerfile -t <repo>/thaw-agent:<tag> .
ARG DEBIAN_IMAGE=debian:trixie-slim

FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      criu python3-pycriu python3 python3-venv ca-certificates iproute2 tar zstd \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY thaw ./thaw
COPY webhook ./webhook
COPY certs ./certs
COPY agent ./agent
COPY sidecar ./sidecar
# --system-site-packages: pycriu comes from the Debian package, not from PyPI.
RUN python3 -m venv --system-site-packages /opt/thaw \
 && /opt/thaw/bin/pip install . \
 && rm -rf /src
WORKDIR /
ENV PATH=/opt/thaw/bin:$PATH PYTHONUNBUFFERED=1
RUN criu --version && python3 -c "import pycriu"
ENTRYPOINT ["thaw"]
CMD ["agent", "run", "--help"]
