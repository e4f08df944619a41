#!/usr/bin/env bash
# Install CRIU >= 4.2 and pycriu for thaw, idempotently, into $THAW_CACHE (keyed by version).
#
# CRIU before 4.2 cannot dump a process holding a TCP or UDP socket on kernels >= 6.16
# ("Can't get 1:16 opt"), i.e. any HTTP server. Debian 12's criu is 3.17 and trixie's 4.1.1,
# so we take criu and its libraries (including the newer glibc it is built against) from
# Debian sid with apt, using a PRIVATE sources list and lists dir: the system's apt
# configuration is never touched. The packages are only unpacked (dpkg -x), never
# installed; the binary runs through the unpacked loader. Results:
#   $THAW_CACHE/criu-VERSION/bin/criu    wrapper script (what `criu` means for thaw)
#   $THAW_CACHE/criu-VERSION/criu.json   loader, library path and binary (the agent execs
#                                        these directly when it runs criu inside a container)
#   $THAW_CACHE/criu-current             symlink to the newest finished criu-VERSION
#   VENV/bin/criu                        symlink to the wrapper
#   VENV/.../site-packages/thaw-pycriu.pth  makes the unpacked `pycriu` importable
# A system CRIU >= 4.2 on PATH is used instead of the unpacked binary when present.
set -euo pipefail

VENV=${1:?usage: install-criu.sh VENV}
MIN_VERSION=4.2
SUITE=${THAW_CRIU_SUITE:-sid}
THAW_CACHE=${THAW_CACHE:-$HOME/.cache/thaw}
CURRENT=$THAW_CACHE/criu-current
PKGS=(criu python3-pycriu)

log() { echo "install-criu: $*" >&2; }

site_packages() {
    "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

version_at_least() { # A >= B, dotted versions
    [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1) == "$2" ]]
}

link_into_venv() {
    ln -sfn "$DEST/bin/criu" "$VENV/bin/criu"
    echo "$DEST/root/usr/lib/python3/dist-packages" >"$(site_packages)/thaw-pycriu.pth"
}

# A finished install of a good enough version is reused without asking the archive.
if [[ -f $CURRENT/.complete ]] && version_at_least "$(cat "$CURRENT/VERSION")" "$MIN_VERSION"; then
    DEST=$(readlink -f "$CURRENT")
    link_into_venv
    exit 0
fi

command -v apt-get >/dev/null || { log "apt-get is required to fetch CRIU from Debian"; exit 1; }
command -v dpkg >/dev/null || { log "dpkg is required to unpack CRIU"; exit 1; }

APT=$THAW_CACHE/apt-criu-$SUITE
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/debs"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
MIRROR=$("$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh")
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$APT/sources.list"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT" -o "Dir::Cache::Archives=$APT/archives"
    -o "Dir::Cache::pkgcache=$APT/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$APT/srcpkgcache.bin"
    -o Dir::State::status=/dev/null -o APT::Architecture=amd64 -o APT::Sandbox::User=root
    -o Debug::NoLocking=1 -q
    # sid's Release files expire within days; a dated mirror would otherwise be refused.
    -o Acquire::Check-Valid-Until=false
)
log "fetching the $SUITE package index (private apt lists)"
apt-get "${APT_OPTS[@]}" update >&2
VERSION=$(apt-cache "${APT_OPTS[@]}" policy criu | awk '/Candidate:/ {print $2}')
VERSION=${VERSION%%-*}
version_at_least "$VERSION" "$MIN_VERSION" ||
    { log "$SUITE offers criu $VERSION; thaw needs >= $MIN_VERSION"; exit 1; }
DEST=$THAW_CACHE/criu-$VERSION
ROOT=$DEST/root

# criu's whole runtime closure (status=/dev/null: apt assumes nothing is installed, so the
# newer glibc and every library come along and the binary never mixes with the host's).
mapfile -t DEPS < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -v '^[ <]' | sort -u)
log "downloading: ${DEPS[*]} python3-pycriu"
(cd "$APT/debs" && rm -f ./*.deb && apt-get "${APT_OPTS[@]}" download "${DEPS[@]}" python3-pycriu >&2)

rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
for deb in "$APT/debs"/*.deb; do dpkg -x "$deb" "$ROOT.tmp"; done
rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT"

LOADER=$ROOT/usr/lib64/ld-linux-x86-64.so.2
[[ -x $LOADER ]] || LOADER=$ROOT/lib64/ld-linux-x86-64.so.2
LIBPATH=$ROOT/usr/lib/x86_64-linux-gnu
[[ -d $ROOT/lib/x86_64-linux-gnu ]] && LIBPATH=$LIBPATH:$ROOT/lib/x86_64-linux-gnu
BINARY=$ROOT/usr/sbin/criu

system_criu_version() {
    local v
    v=$(criu --version 2>/dev/null | sed -n 's/^Version: *\([0-9.]*\).*/\1/p') || true
    echo "${v:-0}"
}

mkdir -p "$DEST/bin"
if command -v criu >/dev/null && [[ $(readlink -f "$(command -v criu)") != "$DEST/bin/criu" ]] &&
    version_at_least "$(system_criu_version)" "$MIN_VERSION"; then
    SYS=$(command -v criu)
    log "using the system's $(criu --version | head -1) at $SYS"
    printf '#!/bin/sh\nexec %q "$@"\n' "$SYS" >"$DEST/bin/criu"
    printf '{"binary": "%s", "loader": "", "library_path": []}\n' "$SYS" >"$DEST/criu.json"
else
    printf '#!/bin/sh\nexec %q --library-path %q %q "$@"\n' "$LOADER" "$LIBPATH" "$BINARY" \
        >"$DEST/bin/criu"
    "$VENV/bin/python" - "$DEST/criu.json" "$BINARY" "$LOADER" "$LIBPATH" <<'EOF'
import json, sys
out, binary, loader, libpath = sys.argv[1:]
with open(out, "w") as f:
    json.dump({"binary": binary, "loader": loader, "library_path": libpath.split(":")}, f)
EOF
fi
chmod +x "$DEST/bin/criu"

got=$("$DEST/bin/criu" --version | head -1)
version_at_least "${got#Version: }" "$MIN_VERSION" ||
    { log "unexpected criu version: $got"; exit 1; }
link_into_venv
"$VENV/bin/python" -c 'import pycriu.criu' ||
    { log "pycriu does not import (is protobuf installed in $VENV?)"; exit 1; }
echo "${got#Version: }" >"$DEST/VERSION"
touch "$DEST/.complete"
ln -sfn "$DEST" "$CURRENT"
log "criu ready: $got ($DEST/bin/criu)"
