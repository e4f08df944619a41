"""PID 1 set-up step of a :mod:`agent.sandbox` container (runs inside the new namespaces).

``python -m agent.sandbox_init BASE CONTROL HOSTNAME -- ARGV...`` is started by
``unshare --pid --fork --mount --ipc --uts --net``. It builds the root
filesystem the way a container runtime does (overlay over the host's ``/`` with
a writable upper dir under BASE, private /proc, /dev, /run, /tmp, the control
dir bind-mounted at the contract path), pivots into it and ``exec``s ARGV, so
ARGV becomes PID 1 of the container. With ``$THAW_SANDBOX_NET_FD`` set it first
waits for the host to write one byte there: the box's network is set up from
outside (:mod:`agent.sandbox_net`), and a pod's command never starts before its
network exists. Only the standard library is used because this runs before
anything else exists in the namespace.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import socket
import struct
import sys

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86_64

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


BINDS_ENV = "THAW_SANDBOX_BINDS"  # host dirs the box must see although the overlay hides them
NET_FD_ENV = "THAW_SANDBOX_NET_FD"  # read end of a pipe: one byte once the network is up
# "bind": the box's root is the host's / itself, not an overlay over it. CRIU cannot place a
# mapped file whose overlay lies over another overlay (an agent running in a container).
ROOT_MODE_ENV = "THAW_SANDBOX_ROOT"
NET_WAIT_S = 30.0


def mount(src: str, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    rc = _libc.mount(
        src.encode(), target.encode(), fstype.encode() if fstype else None, flags, data.encode()
    )
    _check(rc, f"mount {src} on {target}")


def setup_root(base: str, control: str, control_in_box: str) -> str:
    """Mount the container's root under BASE/merged and return it."""
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    merged = os.path.join(base, "merged")
    if os.environ.pop(ROOT_MODE_ENV, "") == "bind":
        mount("/", merged, None, MS_BIND | MS_REC)
    else:
        opts = f"lowerdir=/,upperdir={base}/upper,workdir={base}/work"
        mount("overlay", merged, "overlay", 0, opts)
    mount("proc", f"{merged}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("/dev", f"{merged}/dev", None, MS_BIND | MS_REC)
    # A pod's /dev/shm is its own tmpfs, not the node's: engines keep semaphores there.
    mount("tmpfs", f"{merged}/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    mount("tmpfs", f"{merged}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    mount("tmpfs", f"{merged}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for path in filter(None, os.environ.get(BINDS_ENV, "").split(":")):
        os.makedirs(merged + path, exist_ok=True)
        mount(path, merged + path, None, MS_BIND | MS_REC)
    target = merged + control_in_box
    os.makedirs(target, exist_ok=True)
    mount(control, target, None, MS_BIND)
    return merged


def unmount_lazy(target: str) -> None:
    """Detach a mount now; the kernel frees it once nothing uses it (no-op if not mounted)."""
    _libc.umount2(target.encode(), MNT_DETACH)


def loopback_up() -> None:
    """Bring ``lo`` up in the new net namespace, as every pod has it (CRIU probes it)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def wait_for_network() -> None:
    """Block until the host says the box's network is up (no-op without a network)."""
    raw = os.environ.pop(NET_FD_ENV, "")
    if not raw:
        return
    fd = int(raw)
    ready, _, _ = select.select([fd], [], [], NET_WAIT_S)
    got = os.read(fd, 1) if ready else b""
    os.close(fd)
    if got != b"1":
        sys.exit(f"sandbox_init: the host did not set up the network (waited {NET_WAIT_S:.0f}s)")


def pivot_into(new_root: str) -> None:
    """pivot_root(".", ".") then detach the old root: no put_old dir left in the upper dir."""
    os.chdir(new_root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def main(argv: list[str]) -> None:
    base, control, control_in_box, hostname, sep, *cmd = argv
    if sep != "--" or not cmd:
        sys.exit("usage: sandbox_init BASE CONTROL CONTROL_IN_BOX HOSTNAME -- ARGV...")
    root = setup_root(base, control, control_in_box)
    socket.sethostname(hostname)
    loopback_up()
    wait_for_network()
    pivot_into(root)
    os.setsid()  # like runc: the container's PID 1 leads its own session
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
