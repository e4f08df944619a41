#!/usr/bin/env bash
# Build real Kubernetes v1.20.2 server binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl) plus etcd 3.4, offline from Debian's archive.
#
# Why from source: no package registry ships kube-apiserver, but Debian bookworm's
# `kubernetes` source package is the full upstream v1.20.2 tree with its vendor/ folder.
# It builds unchanged with Go 1.15 (taken from bullseye and only unpacked into the cache,
# never installed). etcd comes from Debian's etcd-server package, unpacked the same way.
#
# Everything lands in $THAW_CACHE/kube-<version>/bin; a second run is a no-op that only
# prints that folder. Apt uses a private sources list, lists dir and cache: the system's
# apt sources and package state are never used or changed.
set -euo pipefail

KUBE_VERSION=1.20.2
KUBE_SRC_PKG=kubernetes
KUBE_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
GO_PKG_VERSION=1.15
ETCD_PKG=etcd-server
DEBIAN_MIRROR="$("$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh")"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Two cores and 24 GiB: two compile jobs keep the linker's peak memory (~3 GiB) safe.
BUILD_JOBS="${THAW_BUILD_JOBS:-2}"

THAW_CACHE="${THAW_CACHE:-$HOME/.cache/thaw}"
ROOT="$THAW_CACHE/kube-$KUBE_VERSION"
BIN="$ROOT/bin"
WORK="$ROOT/work"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd etcdctl)

log() { printf '[build-kube] %s\n' "$*" >&2; }

all_present() {
  local b
  [[ -f "$BIN/.complete" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

if all_present; then
  echo "$BIN"
  exit 0
fi

for tool in apt-get dpkg-deb tar flock; do
  command -v "$tool" >/dev/null || { log "missing required tool: $tool"; exit 1; }
done
[[ -r "$KEYRING" ]] || { log "missing $KEYRING (package debian-archive-keyring)"; exit 1; }

mkdir -p "$ROOT"
# One build at a time per cache (make e2e and make e2e-node may start together).
exec 9>"$ROOT/.lock"
flock 9
if all_present; then # another run finished while we waited for the lock
  echo "$BIN"
  exit 0
fi

started=$(date +%s)
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/dl" "$BIN"

# --- private apt configuration ------------------------------------------------------------
cat >"$WORK/apt/sources.list" <<EOF
deb [signed-by=$KEYRING] $DEBIAN_MIRROR bookworm main
deb-src [signed-by=$KEYRING] $DEBIAN_MIRROR bookworm main
deb [signed-by=$KEYRING] $DEBIAN_MIRROR bullseye main
EOF
APT_OPTS=(
  -o "Dir::Etc::SourceList=$WORK/apt/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$WORK/apt/lists"
  -o "Dir::Cache=$WORK/apt/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)
log "refreshing private apt lists"
apt-get "${APT_OPTS[@]}" -qq update

# --- downloads (kept in the cache so an interrupted build resumes without re-fetching) -----
cd "$WORK/dl"
if ! compgen -G "${KUBE_SRC_PKG}_*.orig.tar.gz" >/dev/null; then
  log "fetching source package $KUBE_SRC_PKG $KUBE_SRC_VERSION"
  apt-get "${APT_OPTS[@]}" -qq source --download-only "$KUBE_SRC_PKG=$KUBE_SRC_VERSION"
fi
for pkg in "golang-$GO_PKG_VERSION-go" "golang-$GO_PKG_VERSION-src" "$ETCD_PKG" etcd-client; do
  if ! compgen -G "${pkg}_*.deb" >/dev/null; then
    log "fetching $pkg"
    apt-get "${APT_OPTS[@]}" -qq download "$pkg"
  fi
done

# --- etcd: unpack the packaged binary, never install the service ----------------------------
if [[ ! -x "$BIN/etcd" || ! -x "$BIN/etcdctl" ]]; then
  rm -rf "$WORK/etcd-root"
  dpkg-deb -x "$(compgen -G "${ETCD_PKG}_*.deb")" "$WORK/etcd-root"
  dpkg-deb -x "$(compgen -G "etcd-client_*.deb")" "$WORK/etcd-root"
  install -m 0755 "$WORK/etcd-root/usr/bin/etcd" "$BIN/etcd"
  install -m 0755 "$WORK/etcd-root/usr/bin/etcdctl" "$BIN/etcdctl"
  rm -rf "$WORK/etcd-root"
fi

# --- Go toolchain, unpacked into the cache ----------------------------------------------------
GOROOT_DIR="$WORK/go-root/usr/lib/go-$GO_PKG_VERSION"
if [[ ! -x "$GOROOT_DIR/bin/go" ]]; then
  rm -rf "$WORK/go-root"
  dpkg-deb -x "$(compgen -G "golang-$GO_PKG_VERSION-go_*.deb")" "$WORK/go-root"
  dpkg-deb -x "$(compgen -G "golang-$GO_PKG_VERSION-src_*.deb")" "$WORK/go-root"
fi

# --- upstream source tree ---------------------------------------------------------------------
SRC="$WORK/src/kubernetes-$KUBE_VERSION"
if [[ ! -f "$SRC/.unpacked" ]]; then
  rm -rf "$WORK/src"
  mkdir -p "$WORK/src"
  log "unpacking upstream tree"
  tar -xzf "$(compgen -G "${KUBE_SRC_PKG}_*.orig.tar.gz")" -C "$WORK/src"
  [[ -d "$SRC/vendor" ]] || { log "source tree has no vendor/ folder: cannot build offline"; exit 1; }
  touch "$SRC/.unpacked"
fi

# --- build -----------------------------------------------------------------------------------
export GOROOT="$GOROOT_DIR"
export PATH="$GOROOT/bin:$PATH"
export GOPATH="$WORK/gopath"
export GOCACHE="$WORK/gocache"
export GO111MODULE=on
export GOFLAGS=-mod=vendor
export GOPROXY=off
export GOSUMDB=off
export GOTOOLCHAIN=local

build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkgpath in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkgpath.gitVersion=v$KUBE_VERSION"
  ldflags+=" -X $pkgpath.gitMajor=${KUBE_VERSION%%.*}"
  minor=${KUBE_VERSION#*.}
  ldflags+=" -X $pkgpath.gitMinor=${minor%%.*}"
  ldflags+=" -X $pkgpath.gitTreeState=archive"
  ldflags+=" -X $pkgpath.buildDate=$build_date"
done

# The release tarball lacks one generated file, the API server's OpenAPI definitions
# (upstream's `make` generates it before compiling). Generate it the same way: openapi-gen
# from vendor/, run in GOPATH mode over every package tagged +k8s:openapi-gen.
OPENAPI_OUT="$SRC/pkg/generated/openapi/zz_generated.openapi.go"
if [[ ! -f "$OPENAPI_OUT" ]]; then
  log "generating pkg/generated/openapi (openapi-gen)"
  mkdir -p "$GOPATH/src/k8s.io" "$WORK/tools"
  ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
  (
    cd "$GOPATH/src/k8s.io/kubernetes"
    export GO111MODULE=off
    unset GOFLAGS
    go build -o "$WORK/tools/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    # Same package set as upstream's Makefile.generated_files: every Go dir outside vendor/
    # (staging/src named as vendor/), minus code-generator and sample-apiserver examples.
    find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \
      -type f -name '*.go' |
      sed -e 's|/[^/]*$||' -e 's|^\./||' -e 's|^staging/src|vendor|' | LC_ALL=C sort -u |
      grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
        >"$WORK/go-dirs.txt"
    while read -r dir; do
      tagged=$(grep -l --color=never '^// *+k8s:' "$dir"/*.go 2>/dev/null || true)
      [[ -n "$tagged" ]] || continue
      # shellcheck disable=SC2086 # word splitting of the file list is intended
      grep -l --color=never '+k8s:openapi-gen=' $tagged | head -1 || true
    done <"$WORK/go-dirs.txt" | xargs -r -n1 dirname | LC_ALL=C sort -u \
      | sed 's|^|k8s.io/kubernetes/|' | paste -sd, >"$WORK/openapi-inputs.txt"
    [[ -s "$WORK/openapi-inputs.txt" ]] || { log "no openapi-gen input packages found"; exit 1; }
    "$WORK/tools/openapi-gen" --logtostderr=false \
      -i "$(cat "$WORK/openapi-inputs.txt")" \
      -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      -r "$WORK/openapi-violations.report"
  )
  [[ -f "$OPENAPI_OUT" ]] || { log "openapi-gen did not write $OPENAPI_OUT"; exit 1; }
fi

mkdir -p "$WORK/out"
cd "$SRC"
log "building with $(go version) using $BUILD_JOBS jobs (takes several minutes)"
# Server components and kubectl are static (as upstream ships them); kubelet uses cgo when a C
# compiler is present, as upstream builds it.
CGO_ENABLED=0 go build -p "$BUILD_JOBS" -trimpath -ldflags "$ldflags" -o "$WORK/out/" \
  ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler \
  ./cmd/kube-proxy ./cmd/kubectl
kubelet_cgo=0
command -v gcc >/dev/null && kubelet_cgo=1
CGO_ENABLED=$kubelet_cgo go build -p "$BUILD_JOBS" -trimpath -ldflags "$ldflags" \
  -o "$WORK/out/" ./cmd/kubelet

for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  install -m 0755 "$WORK/out/$b" "$BIN/$b"
done
"$BIN/kube-apiserver" --version >&2
"$BIN/etcd" --version | head -1 >&2
touch "$BIN/.complete"

# The build tree and Go cache are several GiB; the binaries are all later runs need.
if [[ -z "${THAW_KEEP_BUILD_TREE:-}" ]]; then
  chmod -R u+w "$WORK/gopath" 2>/dev/null || true
  rm -rf "$WORK/src" "$WORK/gocache" "$WORK/gopath" "$WORK/out" "$WORK/go-root" "$WORK/tools"
fi
log "built in $(($(date +%s) - started))s"
echo "$BIN"
