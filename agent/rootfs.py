"""The container's writable-layer changes travel with the snapshot.

A worker may have written files (compiled kernels, caches, unpacked weights)
into its container's filesystem, and it may hold some open: CRIU reopens
files by path, so the restore container needs the same changes *before*
CRIU runs. ``capture`` tars the overlay upper dir (found through the
container root's mount); ``apply`` unpacks it inside the target container's
mount namespace and root (see :mod:`agent.nsrun`), so nothing can land
outside the container whatever the tar holds.

Overlay whiteouts (char device 0:0, "this lower file was deleted") and opaque
directories are carried as pax headers and replayed as deletions.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path

from thaw.contract import CONTROL_DIR

WHITEOUT = "THAW.whiteout"
OPAQUE = "THAW.opaque"
OPAQUE_XATTR = "trusted.overlay.opaque"


def _skipped_prefixes() -> tuple[str, ...]:
    """The control dir (a bind mount, per pod) never travels; /var/run is an alias of /run."""
    rel = CONTROL_DIR.strip("/")
    out = [rel]
    if rel.startswith("var/run/"):
        out.append(rel.removeprefix("var/"))
    return tuple(out)


def _skip(rel: str) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in _skipped_prefixes())


def capture(upper: Path, out: Path) -> int:
    """Tar the overlay upper dir into ``out``; returns the number of entries."""
    count = 0
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirs, files in os.walk(upper):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, upper)
                if _skip(rel):
                    if name in dirs:
                        dirs.remove(name)
                    continue
                st = os.lstat(full)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    info = tarfile.TarInfo(rel)
                    info.pax_headers = {WHITEOUT: "1"}
                    tar.addfile(info)
                elif stat.S_IFMT(st.st_mode) in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                    info = tar.gettarinfo(full, rel)
                    if stat.S_ISDIR(st.st_mode) and _is_opaque(full):
                        info.pax_headers = {OPAQUE: "1"}
                    if info.isreg():
                        with _open_same_file(full, st) as f:
                            info.size = os.fstat(f.fileno()).st_size
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
                else:
                    continue  # sockets, fifos, devices: not part of a portable diff
                count += 1
    return count


def _open_same_file(path: str, seen: os.stat_result):
    """Open what ``lstat`` saw, or fail: the worker runs on while its layer is tarred, and a
    file swapped for a symlink in between must not make the root agent read through it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(f"{path}: replaced while the container's layer was captured")
    return os.fdopen(fd, "rb")


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _check_inside(root: str, dest: str) -> None:
    """Deletions replayed by hand must not follow a symlinked parent out of ``root``."""
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(dest))
    if parent != real_root and not parent.startswith(real_root.rstrip("/") + "/"):
        raise ValueError(f"rootfs diff entry {dest!r} goes through a link outside the root")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _safe_rel(name: str) -> str:
    """The member's path relative to the root; never one that climbs out of it.

    The tar filter guards extraction, but whiteouts and opaque dirs are replayed by
    hand, so their names are checked here (the chroot of the untar is a second wall).
    """
    rel = os.path.normpath(name.lstrip("/"))
    if "\0" in name or rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        raise ValueError(f"rootfs diff entry {name!r} points outside the container root")
    return rel


def mount_points(mountinfo: str) -> list[str]:
    """Mount points listed in a ``/proc/<pid>/mountinfo`` (as that process sees them).

    The kubelet bind-mounts per-pod files (``/etc/hosts``, ``/etc/hostname``,
    ``/etc/resolv.conf``, ``/dev/termination-log``) and volumes into every
    container; their mount targets show up in the source's upper dir, but the
    target pod has its own mounts there, which must win (replacing one fails
    with EBUSY anyway). The agent reads the target container's list on the host
    side (the untar helper is in the container's mount namespace but not its
    pid namespace, so its own ``/proc/self`` does not resolve there).
    """
    out = []
    with open(mountinfo) as f:
        for line in f:
            out.append(line.split()[4].encode().decode("unicode_escape"))
    return out


def apply(tar_fd: int, root: str = "/", mounts: Iterable[str] = ()) -> int:
    """Unpack a captured diff into ``root`` (run inside the target's mount ns and root).

    Files at ``mounts`` (the target's mount points, absolute in its root) are left alone.
    """
    count = 0
    mounted = {os.path.relpath(m, "/") for m in mounts}
    with os.fdopen(os.dup(tar_fd), "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        for member in tar:
            rel = _safe_rel(member.name)
            if _skip(rel) or (rel in mounted and not member.isdir()):
                continue
            dest = os.path.join(root, rel)
            if member.pax_headers.get(WHITEOUT):
                _check_inside(root, dest)
                _remove(dest)
                count += 1
                continue
            if member.isdir() and member.pax_headers.get(OPAQUE) and os.path.isdir(dest):
                _check_inside(root, os.path.join(dest, "x"))
                for child in os.listdir(dest):
                    _remove(os.path.join(dest, child))
            if not member.isdir() and os.path.lexists(dest):
                _check_inside(root, dest)
                _remove(dest)
            if member.islnk():  # the "tar" filter lets hard links name any host file
                target = _safe_rel(member.linkname)
                _check_inside(root, os.path.join(root, target))
                member = member.replace(linkname=target, deep=False)
            tar.extract(member, root, filter="tar")
            count += 1
    return count
