"""``thaw sidecar restore-init``: node checks, prefetch, and the cold-start path."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.prefetch import evict, prefetch
from sidecar.restore_init import agent_serves, agent_wait_from_env, run_restore_init
from thaw.contract import (
    AGENT_HEARTBEAT_DIR,
    ENV_AGENT_WAIT,
    MANIFEST_FILE,
    FileEntry,
    GpuInfo,
    Manifest,
    Signal,
)

REPO = Path(__file__).resolve().parents[2]
H100 = GpuInfo(
    "NVIDIA H100 80GB HBM3", "GPU-11111111-2222-3333-4444-555555555555", "580.159.04", "13.0"
)


def make_snapshot(store: Path, name: str = "snap", gpus: tuple[GpuInfo, ...] = ()) -> Manifest:
    folder = store / name
    (folder / "criu").mkdir(parents=True)
    sizes = {
        "criu/pages-1.img": 3 * (8 << 20) + 12345,
        "criu/core-1.img": 777,
        "rootfs-diff.tar": 0,
    }
    entries = []
    for rel, size in sizes.items():
        data = os.urandom(size)
        (folder / rel).write_bytes(data)
        entries.append(FileEntry(rel, size, hashlib.sha256(data).hexdigest()))
    manifest = Manifest(
        name=name, key="k", created="2026-01-01T00:00:00Z", image="img", kernel="6.1",
        arch=platform.machine(), criu_version="4.1.1", root_pid=301, gpus=gpus,
        files=tuple(entries),
    )  # fmt: skip
    (folder / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def no_gpu_expected() -> tuple[GpuInfo, ...]:
    raise AssertionError("a CPU-only snapshot must not query the GPU")


@pytest.fixture(autouse=True)
def no_agent_check(monkeypatch) -> None:
    """These tests are about the snapshot and the node; the agent check has its own below."""
    monkeypatch.setenv(ENV_AGENT_WAIT, "0")


def test_cpu_snapshot_prefetches_and_requests_restore(tmp_path: Path) -> None:
    manifest = make_snapshot(tmp_path / "store")
    result = run_restore_init(
        tmp_path / "store", "snap", tmp_path / "ctl", readers=4, gpus=no_gpu_expected
    )
    assert result.signal == Signal.RESTORE_REQUESTED
    written = json.loads((tmp_path / "ctl" / Signal.RESTORE_REQUESTED.value).read_text())
    assert written["prefetched_bytes"] == manifest.total_bytes
    assert written["snapshot"] == "snap"
    assert not (tmp_path / "ctl" / Signal.RESTORE_FAILED.value).exists()


def test_gpu_snapshot_on_matching_node(tmp_path: Path) -> None:
    make_snapshot(tmp_path / "store", gpus=(H100,))
    other_card = GpuInfo(
        H100.model, "GPU-99999999-2222-3333-4444-555555555555", H100.driver_version, "13.0"
    )
    result = run_restore_init(
        tmp_path / "store", "snap", tmp_path / "ctl", gpus=lambda: (other_card,)
    )
    assert result.signal == Signal.RESTORE_REQUESTED


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        ((), "node has none"),
        ((GpuInfo(H100.model, H100.uuid, "575.51.03", "12.9"),), "driver 575.51.03"),
        (
            (GpuInfo("NVIDIA A100-SXM4-80GB", H100.uuid, H100.driver_version, "13.0"),),
            "no free NVIDIA H100",
        ),
    ],
)
def test_incompatible_node_writes_restore_failed(tmp_path: Path, node, reason: str) -> None:
    make_snapshot(tmp_path / "store", gpus=(H100,))
    result = run_restore_init(tmp_path / "store", "snap", tmp_path / "ctl", gpus=lambda: node)
    assert result.signal == Signal.RESTORE_FAILED
    failed = json.loads((tmp_path / "ctl" / Signal.RESTORE_FAILED.value).read_text())
    assert reason in failed["reason"]
    assert not (tmp_path / "ctl" / Signal.RESTORE_REQUESTED.value).exists()


def test_bad_snapshots_fail_with_reason(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_snapshot(store, "good")
    cases = {
        "": "no snapshot named",
        "absent": "cannot read manifest.json",
        "../good": "invalid snapshot name",
    }
    (store / "garbled").mkdir()
    (store / "garbled" / MANIFEST_FILE).write_text("{not json")
    cases["garbled"] = "bad manifest"
    make_snapshot(store, "torn")
    (store / "torn" / "criu" / "pages-1.img").unlink()
    cases["torn"] = "missing files: criu/pages-1.img"
    for name, reason in cases.items():
        ctl = tmp_path / f"ctl-{len(reason)}"
        result = run_restore_init(store, name, ctl, gpus=no_gpu_expected)
        assert result.signal == Signal.RESTORE_FAILED, name
        assert reason in result.payload["reason"], (name, result.payload)
        assert (ctl / Signal.RESTORE_FAILED.value).exists()


def test_cli_never_fails_the_pod(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "thaw.cli", "sidecar", "restore-init", "--store-dir", str(tmp_path),
         "--snapshot", "nope", "--control-dir", str(tmp_path / "ctl")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (
        "cannot read manifest.json" in (tmp_path / "ctl" / Signal.RESTORE_FAILED.value).read_text()
    )


@pytest.mark.parametrize("readers", [1, 3])
def test_prefetch_reads_every_byte(tmp_path: Path, readers: int) -> None:
    files = []
    for i, size in enumerate([0, 1, 4096, (1 << 20) + 3]):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(size))
        files.append(p)
    evict(files)
    stats = prefetch(files, readers=readers, chunk=64 << 10)
    assert stats.bytes == sum(p.stat().st_size for p in files)
    assert stats.files == 4 and stats.readers == readers


def test_prefetch_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        prefetch([tmp_path / "absent"])
    with pytest.raises(ValueError):
        prefetch([], readers=0)


def test_no_agent_heartbeat_fails_fast_with_a_reason(tmp_path: Path) -> None:
    make_snapshot(tmp_path / "store")
    t0 = time.monotonic()
    result = run_restore_init(
        tmp_path / "store", "snap", tmp_path / "ctl", gpus=no_gpu_expected, agent_wait_s=1
    )
    assert time.monotonic() - t0 < 5
    assert result.signal == Signal.RESTORE_FAILED
    assert "no thaw agent on this node" in result.payload["reason"]
    assert not (tmp_path / "ctl" / Signal.RESTORE_REQUESTED.value).exists()


def test_heartbeats_fresh_stale_foreign_and_hostile(tmp_path: Path) -> None:
    beats = tmp_path / AGENT_HEARTBEAT_DIR
    beats.mkdir()
    assert not agent_serves(tmp_path, "n1")
    (beats / "n1.json").write_text(json.dumps({"time": time.time() - 3600}))
    assert not agent_serves(tmp_path, "n1")  # an agent that died without cleaning up
    (beats / "n2.json").write_text(json.dumps({"time": time.time()}))
    assert not agent_serves(tmp_path, "n1")  # another node's agent does not serve this one
    assert agent_serves(tmp_path, "n2") and agent_serves(tmp_path, "")
    (beats / "n1.json").unlink()
    os.mkfifo(beats / "n1.json")  # never blocks the init step
    assert not agent_serves(tmp_path, "n1")


@pytest.mark.parametrize(("raw", "expected"), [("", 15.0), ("3", 3.0), ("x", 15.0), ("-1", 15.0)])
def test_agent_wait_from_env(monkeypatch, raw: str, expected: float) -> None:
    monkeypatch.setenv(ENV_AGENT_WAIT, raw)
    assert agent_wait_from_env() == expected
