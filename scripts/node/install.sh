#!/usr/bin/env bash
# Fetch the node runtime (containerd 1.6, runc 1.1, CNI plugins) plus the
# static busybox and debootstrap used by the image recipes, all from Debian
# bookworm, into $THAW_CACHE/node-<versions>/.  Idempotent: a finished tree
# carries a .done stamp and is reused.  Prints the tree's path on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=apt-private.sh
source "$here/apt-private.sh"

cache=${THAW_CACHE:-$HOME/.cache/thaw}
apt_dir=$cache/apt-bookworm
# iptables and its libraries: kube-proxy programs Service rules in the node's namespace.
pkgs=(containerd runc containernetworking-plugins busybox-static debootstrap
  iptables libip4tc2 libip6tc2 libxtables12 libnetfilter-conntrack3 libnfnetlink0 libnftnl11 libmnl0)

apt_private_init "$apt_dir" bookworm >&2
key=""
for p in "${pkgs[@]}"; do
  v=$(apt_private_version "$apt_dir" "$p")
  [[ -n $v && $v != "(none)" ]] || { echo "install.sh: $p not found in bookworm" >&2; exit 1; }
  key+="${p}_${v};"
done
short=$(printf '%s' "$key" | sha256sum | cut -c1-12)
cv=$(apt_private_version "$apt_dir" containerd)
rv=$(apt_private_version "$apt_dir" runc)
dest=$cache/node-containerd${cv%%~*}-runc${rv%%+*}-$short
if [[ -f $dest/.done ]]; then
  echo "$dest"
  exit 0
fi

work=$(mktemp -d "$cache/.node-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
apt_private_download "$apt_dir" "$work/debs" "${pkgs[@]}"
mkdir -p "$work/root"
for deb in "$work"/debs/*.deb; do
  dpkg -x "$deb" "$work/root"
done
printf '%s\n' "${key//;/$'\n'}" | sed '/^$/d' >"$work/root/VERSIONS"
# Sanity: every binary the node needs is present and runs on this machine.
"$work/root/usr/bin/containerd" --version >&2
"$work/root/usr/sbin/runc" --version >&2
test -x "$work/root/usr/lib/cni/bridge"
test -x "$work/root/usr/lib/cni/host-local"
test -x "$work/root/usr/lib/cni/loopback"
test -x "$work/root/bin/busybox"
test -x "$work/root/usr/sbin/xtables-legacy-multi"
rm -rf "$dest"
mv "$work/root" "$dest"
touch "$dest/.done"
echo "$dest"
