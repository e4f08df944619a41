"""Rootfs diff: overlay upper dir -> tar -> applied inside another container's root only."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from agent import criu, procfs, rootfs
from agent.sandbox import Box
from thaw.contract import CONTROL_DIR


def test_capture_carries_files_whiteouts_and_skips_control_dir(tmp_path):
    upper = tmp_path / "upper"
    (upper / "opt/app").mkdir(parents=True)
    (upper / "opt/app/cache.bin").write_bytes(b"kernel cache")
    os.symlink("cache.bin", upper / "opt/app/link")
    os.mknod(upper / "opt/app/deleted", 0o600 | 0o020000, os.makedev(0, 0))  # whiteout
    ctl = upper / os.path.realpath(CONTROL_DIR).lstrip("/")
    ctl.mkdir(parents=True)
    (ctl / "ready-for-checkpoint").write_text("x")
    out = tmp_path / "diff.tar"
    assert rootfs.capture(upper, out) >= 4
    with tarfile.open(out) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert "opt/app/cache.bin" in names and names["opt/app/link"].issym()
    assert names["opt/app/deleted"].pax_headers.get(rootfs.WHITEOUT) == "1"
    assert not any("thaw" in n for n in names)

    root = tmp_path / "root"
    (root / "opt/app").mkdir(parents=True)
    (root / "opt/app/deleted").write_text("lower file the worker deleted")
    with open(out, "rb") as f:
        rootfs.apply(f.fileno(), str(root))
    assert (root / "opt/app/cache.bin").read_bytes() == b"kernel cache"
    assert os.readlink(root / "opt/app/link") == "cache.bin"
    assert not (root / "opt/app/deleted").exists()


@pytest.mark.criu
def test_apply_cannot_write_outside_the_container(criu_ready, tmp_path):
    """A hostile diff (absolute symlink + file through it) lands inside the box, not the host."""
    # Under /var/tmp: the box sees the host's / as its lower layer there (its /tmp is a tmpfs).
    victim = Path(tempfile.mkdtemp(prefix="thaw-victim-", dir="/var/tmp"))
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w", format=tarfile.PAX_FORMAT) as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(victim)
        tar.addfile(link)
        data = b"owned"
        f = tarfile.TarInfo("escape/pwned")
        f.size = len(data)
        tar.addfile(f, io.BytesIO(data))
    box = Box([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "ctl", name="t")
    try:
        time.sleep(0.2)
        spec, _ = criu_ready
        criu.call(
            "untar",
            spec,
            images_dir=tmp_path,
            work_dir=tmp_path,
            log_file="-",
            opts={},
            ns_pid=box.pid,
            extra={"tar": str(evil)},
        )
        assert not (victim / "pwned").exists()
        # It went to the same path *inside* the box, i.e. into its overlay upper dir.
        assert (box.upper / str(victim).lstrip("/") / "pwned").read_bytes() == b"owned"
        assert procfs.root_overlay_upper(box.pid) == box.upper
    finally:
        box.stop()
        shutil.rmtree(victim, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_apply_leaves_runtime_mounted_files_alone(tmp_path):
    """The kubelet bind-mounts /etc/hostname & co into every container: the target's own
    mount wins over the source's copy (writing over a mount point fails with EBUSY)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("")
    mounted = tmp_path / "pod-hostname"
    mounted.write_text("target-pod\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("etc/hostname", b"source-pod\n"), ("etc/app.conf", b"warm\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    diff = tmp_path / "diff.tar"
    diff.write_bytes(buf.getvalue())
    subprocess.run(["mount", "--bind", str(mounted), str(root / "etc/hostname")], check=True)
    try:
        fd = os.open(diff, os.O_RDONLY)
        try:
            mounts = [
                "/" + os.path.relpath(m, root)
                for m in rootfs.mount_points("/proc/self/mountinfo")
                if m.startswith(str(root) + "/")
            ]
            assert mounts == ["/etc/hostname"]
            assert rootfs.apply(fd, str(root), mounts) == 1
        finally:
            os.close(fd)
        assert (root / "etc/hostname").read_text() == "target-pod\n"
        assert (root / "etc/app.conf").read_text() == "warm\n"
    finally:
        subprocess.run(["umount", str(root / "etc/hostname")], check=True)
