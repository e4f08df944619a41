#!/usr/bin/env bash
# Print the Debian archive URI this machine's apt already uses, for the private (trixie/bookworm)
# source lists the install scripts build; $THAW_DEBIAN_MIRROR overrides it. The project's files
# then name no archive host of their own.
set -euo pipefail
if [ -n "${THAW_DEBIAN_MIRROR:-}" ]; then
  echo "${THAW_DEBIAN_MIRROR%/}"
  exit 0
fi
uri=$(
  {
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | cut -d: -f2- | tr ' ' '\n'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | tr ' ' '\n'
  } | grep -E '^(https?|ftp)://' | grep -vE -- '-(security|updates|backports)/?$' |
    grep -m1 -E '/debian/?$' || true
)
if [ -z "$uri" ]; then
  echo "no Debian archive found in this machine's apt sources; set THAW_DEBIAN_MIRROR" >&2
  exit 1
fi
echo "${uri%/}"
