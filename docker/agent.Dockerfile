# syntax=docker/dockerfile:1
# The node agent: `thaw agent run` with CRIU >= 4.2 and its Python bindings (pycriu).
# CRIU before 4.2 cannot dump a TCP or UDP socket on kernels >= 6.16 (any HTTP server holds
# one) and trixie ships 4.1.1, so criu and python3-pycriu come from sid: the image's apt
# sources name sid at priority 100, below trixie's 500, so nothing comes from sid unless
# asked for by name (`criu/sid`), and then only criu's own dependencies that apt takes from
# there; the rest of the image, python3 included, stays trixie.
# The chart runs this image privileged with hostPID; it is the only privileged part of thaw.
# Build from the repository root:  docker build -f docker/agent.Dockerfile -t <repo>/thaw-agent:<tag> .
ARG DEBIAN_IMAGE=debian:trixie-slim

FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY <<EOF /etc/apt/sources.list.d/sid.sources
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
COPY <<EOF /etc/apt/preferences.d/sid.pref
Package: *
Pin: release n=sid
Pin-Priority: 100
EOF
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      criu/sid python3-pycriu/sid python3 python3-venv ca-certificates iproute2 tar zstd \
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
# The doctor's first check: CRIU found, runs, and is >= 4.2, and pycriu loads. The socket
# checks need a privileged container; the agent runs them at start (`thaw agent doctor`).
RUN thaw agent doctor --version-only
ENTRYPOINT ["thaw"]
CMD ["agent", "run", "--help"]
