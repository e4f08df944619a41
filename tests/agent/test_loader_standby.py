"""The agent's standby GPU region loader: a real waiting process handed a restore's arguments.

These run the standby and the loader as the agent does, on a machine without a
GPU (the loader then stops at the files or the driver, with the reason); the
GPU half, a standby that fills and hands regions over, is
tests/gpu/test_gpu_regions_handover.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from agent import loader_standby
from agent.loader_standby import FD_TOKEN, LoaderStandby, spawn
from tests.support.placeholder import chrooted
from thaw.contract import GpuRegion, GpuRegions, RegionSource, SourceFile


def _changed_spec(tmp_path: Path) -> bytes:
    """A regions file whose model changed after the checkpoint: the loader refuses it."""
    model = tmp_path / "m.bin"
    model.write_bytes(os.urandom(1 << 20))
    st = model.stat()
    spec = GpuRegions(
        (
            GpuRegion(
                "weights",
                1 << 20,
                (SourceFile(str(model), st.st_size, st.st_mtime_ns + 1),),
                (RegionSource(str(model), 0, 0, 1 << 20),),
            ),
        )
    )
    return spec.to_json().encode()


def _fd_targets(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def _wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def standby():
    s = LoaderStandby()
    yield s
    s.close()


def test_standby_runs_the_arguments_and_descriptors_it_is_handed(
    tmp_path: Path, standby: LoaderStandby
) -> None:
    control = tmp_path / "control"
    control.mkdir()
    spec = tmp_path / "spec.fifo"  # the loader blocks reading it: time to look at the process
    os.mkfifo(spec)
    standby.start()
    waiting = standby.pid
    report = standby.wait_ready()
    assert report["ready"] is True and "cuda" in report  # up, driver or not
    done_r, done_w = os.pipe()
    try:
        proc = spawn(
            ["--spec", str(spec), "--control", str(control), "--stats", str(tmp_path / "s.json"),
             "--gentle", "1", "--gentle-until-eof", FD_TOKEN % 0],
            [done_r], standby,
        )  # fmt: skip
        os.close(done_r)
        assert proc.pid == waiting and standby.served == 1
        pipe = os.readlink(f"/proc/self/fd/{done_w}")
        _wait_for(lambda: pipe in _fd_targets(proc.pid))  # the agent's pipe reached it
        spec.write_bytes(_changed_spec(tmp_path))  # unblocks it: refused, with the reason
        assert proc.wait(timeout=60) == 1
    finally:
        os.close(done_w)
    stats = json.loads((tmp_path / "s.json").read_text())
    assert "changed since the checkpoint" in stats["error"]
    assert stats["started_wall"] > 0  # the loader's clock starts at the request
    assert list(control.iterdir()) == []


def test_next_standby_starts_once_the_served_loader_is_gone(
    tmp_path: Path, standby: LoaderStandby
) -> None:
    (tmp_path / "spec.json").write_bytes(_changed_spec(tmp_path))
    (tmp_path / "control").mkdir()
    standby.start()
    first = standby.pid
    proc = spawn(["--spec", str(tmp_path / "spec.json"), "--control", str(tmp_path / "control")],
                 [], standby)  # fmt: skip
    assert proc.pid == first
    assert proc.wait(timeout=60) == 1
    _wait_for(lambda: standby.pid not in (None, first))
    second = standby.pid
    assert standby.wait_ready()["ready"] is True
    standby.close()  # the waiting one reads EOF and goes
    _wait_for(lambda: not os.path.exists(f"/proc/{second}") or _zombie(second))
    assert standby.pid is None
    fresh = spawn(["--spec", str(tmp_path / "spec.json"), "--control", str(tmp_path / "control")],
                  [], standby)  # fmt: skip
    assert fresh.pid != second and fresh.wait(timeout=60) == 1  # closed: a fresh process


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_a_dead_standby_costs_only_a_fresh_loader(tmp_path: Path, standby: LoaderStandby) -> None:
    (tmp_path / "spec.json").write_bytes(_changed_spec(tmp_path))
    (tmp_path / "control").mkdir()
    standby.start()
    standby.wait_ready()
    os.kill(standby.pid, 9)
    _wait_for(lambda: _zombie(standby.pid))
    out = tmp_path / "s.json"
    proc = spawn(["--spec", str(tmp_path / "spec.json"), "--control", str(tmp_path / "control"),
                  "--stats", str(out)], [], standby)  # fmt: skip
    assert standby.served == 0 and "agent.gpu_regions" in proc.args
    assert proc.wait(timeout=60) == 1
    assert "changed since the checkpoint" in json.loads(out.read_text())["error"]


def test_agent_modes(monkeypatch) -> None:
    with pytest.raises(ValueError, match="not one of"):
        loader_standby.enable("sometimes")
    assert loader_standby.enable("off") is None and loader_standby.shared() is None
    s = loader_standby.enable("contexts")
    try:
        assert s is loader_standby.shared() and s.contexts == ["all"]
        assert loader_standby.enable("on") is s  # one per agent
        pid = s.pid
        assert pid is not None
    finally:
        loader_standby.disable()
    assert loader_standby.shared() is None
    _wait_for(lambda: _zombie(pid))


def test_restore_step_hands_its_loader_to_the_agents_standby(tmp_path: Path) -> None:
    """With the agent's standby up, the restore step's loader is that waiting process."""
    from agent.steps import GpuRegionsStep, RestoreContext
    from thaw.contract import CONTROL_DIR, CRIU_IMAGES_DIR, GPU_REGIONS_FILE

    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "root"
    control = root / CONTROL_DIR.lstrip("/")
    control.mkdir(parents=True)
    snap = tmp_path / "snap"
    (snap / CRIU_IMAGES_DIR).mkdir(parents=True)
    (snap / CRIU_IMAGES_DIR / "core-1.img").write_bytes(b"c" * 300)
    (snap / GPU_REGIONS_FILE).write_bytes(_changed_spec(tmp_path))
    s = loader_standby.enable("on")
    assert s is not None
    step = GpuRegionsStep()
    with chrooted(root) as pid:
        ctx = RestoreContext(None, snap, pid)  # type: ignore[arg-type]
        try:
            waiting = s.pid
            s.wait_ready()
            step.before_restore(ctx)
            assert step.loader is not None and step.loader.pid == waiting and s.served == 1
            assert step.loader.wait(timeout=60) == 1  # the changed file, refused by that process
            assert list(control.iterdir()) == []  # its socket was in the placeholder's control dir
        finally:
            step.abort_restore(ctx)
            loader_standby.disable()
    time.sleep(0.5)
    assert _standbys() == []  # disable() stopped the next one too


def _standbys() -> list[int]:
    """Live children of this process running a standby."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"agent.loader_standby" in cmd:
            out.append(int(d.name))
    return out
