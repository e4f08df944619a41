#!/usr/bin/env bash
# Sourced helper: download Debian packages with a PRIVATE apt configuration
# (own sources list, lists dir and package cache) so the system's apt setup is
# never read for sources nor written to.  Packages are only downloaded and
# unpacked with `dpkg -x`; no maintainer script runs, no service is installed.
#
#   apt_private_init <dir> <suite> [components]   # writes <dir>/sources.list, runs update
#   apt_private_download <dir> <outdir> <pkg[=ver]>...
#   apt_private_version <dir> <pkg>               # candidate version

apt_private_opts() {
  local dir=$1
  echo "-o Dir::Etc::SourceList=$dir/sources.list -o Dir::Etc::SourceParts=/dev/null" \
    "-o Dir::State::Lists=$dir/lists -o Dir::Cache=$dir/cache" \
    "-o Dir::Cache::archives=$dir/archives -o Debug::NoLocking=1 -o APT::Sandbox::User=root" \
    "-o APT::Get::AllowUnauthenticated=false -o Acquire::Retries=3"
}

apt_private_init() {
  local dir=$1 suite=$2 components=${3:-main}
  local mirror
  mirror=$("$(dirname "${BASH_SOURCE[0]}")/../debian-mirror.sh") || return 1
  mkdir -p "$dir/lists/partial" "$dir/cache" "$dir/archives/partial"
  local want="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite $components"
  # Refresh the index at most once per day per suite.
  if [[ -f $dir/sources.list && $(cat "$dir/sources.list") == "$want" ]] &&
    [[ -n $(find "$dir/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null) ]]; then
    return 0
  fi
  echo "$want" >"$dir/sources.list"
  # shellcheck disable=SC2046
  apt-get -q $(apt_private_opts "$dir") update >/dev/null
}

apt_private_version() {
  local dir=$1 pkg=$2
  # shellcheck disable=SC2046
  apt-cache $(apt_private_opts "$dir") policy "$pkg" | awk '/Candidate:/ {print $2}'
}

apt_private_download() {
  local dir=$1 out=$2
  shift 2
  mkdir -p "$out"
  # shellcheck disable=SC2046
  (cd "$out" && apt-get -q $(apt_private_opts "$dir") download "$@" >/dev/null)
}
