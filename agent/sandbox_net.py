"""A real pod network for an :mod:`agent.sandbox` box: a veth pair into its net namespace.

Box number N gets ``10.213.N.2/24`` and ``fd00:213:N::2/64`` on its ``eth0``; the host
end, ``thaw-vN``, holds ``.1`` / ``::1`` of the same subnets, so the host reaches the
box's listeners at a real address (as a kubelet probe or a Service would) and the
traffic never leaves this machine. There is no default route: a lookup of a name
fails at once instead of waiting for an unreachable DNS server. Creating ``thaw-vN``
is what claims N (the kernel refuses a second link of that name), so boxes of
concurrent processes never share a subnet. The pair dies with the box's namespace;
:func:`detach` removes it sooner.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

LINK_PREFIX = "thaw-v"
MAX_NETS = 250
BOX_LINK = "eth0"
IP_TIMEOUT_S = 10.0


class NetError(RuntimeError):
    """The box's network could not be set up; the message says which step failed."""


@dataclasses.dataclass(frozen=True)
class BoxNet:
    """Addresses of one box's network (``ip``/``ip6``: the box; ``host_*``: the host end)."""

    index: int
    link: str
    ip: str
    ip6: str
    host_ip: str
    host_ip6: str

    @classmethod
    def numbered(cls, n: int) -> BoxNet:
        v4, v6 = f"10.213.{n}.", f"fd00:213:{n}::"
        return cls(n, f"{LINK_PREFIX}{n}", v4 + "2", v6 + "2", v4 + "1", v6 + "1")


def _ip(args: list[str], *, stdin: str = "", netns_of: int | None = None) -> None:
    argv = ["ip", *args]
    if netns_of is not None:
        argv = ["nsenter", f"--net=/proc/{netns_of}/ns/net", *argv]
    try:
        out = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetError(f"`{' '.join(argv)}` failed: {e}") from e
    if out.returncode != 0:
        raise NetError(f"`{' '.join(argv)}` failed: {(out.stderr or out.stdout).strip()}")


def _claim(pid: int) -> BoxNet:
    """Create the veth pair for the first free N; its peer lands in ``pid``'s netns as eth0."""
    for n in range(1, MAX_NETS + 1):
        net = BoxNet.numbered(n)
        try:
            peer = ["peer", "name", BOX_LINK, "netns", str(pid)]
            _ip(["link", "add", net.link, "type", "veth", *peer])
            return net
        except NetError as e:
            if "File exists" not in str(e):
                raise
    raise NetError(f"no free {LINK_PREFIX}N link: all {MAX_NETS} test subnets are in use")


def attach(pid: int, timeout: float = IP_TIMEOUT_S) -> BoxNet:
    """Give the net namespace of ``pid`` an addressed, up ``eth0`` reachable from the host."""
    net = _claim(pid)
    try:
        host = (
            f"address add {net.host_ip}/24 dev {net.link}\n"
            f"address add {net.host_ip6}/64 dev {net.link} nodad\n"
            f"link set {net.link} up\n"
        )
        box = (
            f"address add {net.ip}/24 dev {BOX_LINK}\n"
            f"address add {net.ip6}/64 dev {BOX_LINK} nodad\n"
            f"link set {BOX_LINK} up\n"
        )
        _ip(["-batch", "-"], stdin=host)
        _ip(["-batch", "-"], stdin=box, netns_of=pid)
        _wait_carrier(net.link, timeout)
    except BaseException:
        detach(net)
        raise
    return net


def _wait_carrier(link: str, timeout: float) -> None:
    state = Path(f"/sys/class/net/{link}/operstate")
    deadline = time.monotonic() + timeout
    while state.read_text().strip() != "up":
        if time.monotonic() > deadline:
            raise NetError(f"{link}: no carrier after {timeout}s")
        time.sleep(0.01)


def detach(net: BoxNet) -> None:
    """Delete the pair (already gone with the box's namespace: fine)."""
    subprocess.run(["ip", "link", "delete", net.link], capture_output=True, timeout=IP_TIMEOUT_S)
