"""A hostile rootfs diff never writes, links or deletes outside the container root.

``agent.rootfs.apply`` runs chrooted into the target container in production
(a second wall); here it runs unconfined against a temporary root, so only
its own checks and the tar filter stand between the diff and the directory
beside the root, which must come out byte-for-byte unchanged.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from agent import rootfs


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> int:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    fd = os.memfd_create("rootfs-diff")  # seekable, like the snapshot's tar file
    os.write(fd, buf.getvalue())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def reg(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"pwned"


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info, None


def whiteout(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.pax_headers = {rootfs.WHITEOUT: "1"}
    return info, None


def opaque(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.pax_headers = {rootfs.OPAQUE: "1"}
    return info, None


def state(d: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(d)): (p.lstat().st_nlink, p.read_bytes() if p.is_file() else b"")
        for p in sorted(d.rglob("*"))
    }


@pytest.fixture
def box(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_text("host secret")
    (outside / "dir" / "victim").write_text("keep me")
    return root, outside


HOSTILE = {
    "dotdot-file": [reg("../outside/secret")],
    "dotdot-deep": [reg("a/../../outside/new")],
    "symlink-then-write-through": [symlink("evil", "../outside"), reg("evil/secret")],
    "absolute-symlink-then-write": [symlink("evil", "{outside}"), reg("evil/new")],
    "whiteout-through-symlink": [symlink("evil", "{outside}/dir"), whiteout("evil/victim")],
    "opaque-through-symlink": [symlink("evil", "{outside}"), opaque("evil/dir")],
    "whiteout-dotdot": [whiteout("../outside/dir/victim")],
    "hardlink-dotdot": [hardlink("hl", "../outside/secret")],
    "hardlink-absolute": [hardlink("hl", "{outside}/secret")],
    "hardlink-through-symlink": [symlink("evil", "{outside}"), hardlink("hl", "evil/secret")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_diff_changes_nothing_outside_the_root(box, case):
    root, outside = box
    before = state(outside)
    members = []
    for info, data in HOSTILE[case]:
        info = info.replace(linkname=info.linkname.format(outside=outside), deep=False)
        members.append((info, data))
    fd = tar_of(*members)
    try:
        rootfs.apply(fd, str(root))
        refused = ""
    except (ValueError, KeyError, tarfile.TarError, OSError) as e:
        refused = str(e)  # refusing is fine; what matters is the host side
    finally:
        os.close(fd)
    assert state(outside) == before, f"{case} reached outside the root"
    assert "Illegal seek" not in refused and "Bad file descriptor" not in refused


def test_absolute_member_names_land_inside_the_root(box):
    root, outside = box
    fd = tar_of(reg("/etc/passwd"), reg(f"{outside}/secret"))
    try:
        rootfs.apply(fd, str(root))
    finally:
        os.close(fd)
    assert (root / "etc" / "passwd").read_bytes() == b"pwned"
    assert (outside / "secret").read_text() == "host secret"


def test_capture_never_reads_through_a_file_swapped_for_a_symlink(tmp_path):
    """The worker runs on while its layer is tarred: a file lstat saw as regular and then
    replaced by a symlink to a node file must not be read through (agent/rootfs.py)."""
    secret = tmp_path / "node-secret"
    secret.write_text("node only")
    upper_file = tmp_path / "cache.bin"
    upper_file.write_text("worker data")
    seen = os.lstat(upper_file)
    os.link(upper_file, tmp_path / "keep")  # the inode stays taken: no reuse by the swaps
    upper_file.unlink()
    upper_file.symlink_to(secret)
    with pytest.raises(OSError):
        rootfs._open_same_file(str(upper_file), seen)
    upper_file.unlink()  # a regular file again, but another one: also refused
    upper_file.write_text("swapped")
    with pytest.raises(OSError, match="replaced while"):
        rootfs._open_same_file(str(upper_file), seen)
