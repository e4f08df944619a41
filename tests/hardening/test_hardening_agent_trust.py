"""The agent's restore trusts neither the pod's annotations nor the store blindly.

Real agent (local pod source), real namespace containers, real store: a pod
asking for another namespace's snapshot, or (with a key configured) for an
unsigned or tampered one, gets ``restore-failed`` with the reason and
cold-starts; nothing of the snapshot runs. CLI: ``thaw snapshot keygen``,
``verify --public-key`` and ``restore --public-key`` refuse the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hardening_support import publish_snapshot

from agent.signing import generate_keypair, load_private_key, sign_snapshot
from agent.store import Store
from thaw import contract
from thaw.contract import Signal

THAW = [sys.executable, "-m", "thaw.cli"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def thaw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*THAW, *args], capture_output=True, text=True, timeout=60)


def test_keygen_cli_writes_keys_and_refuses_to_overwrite(tmp_path):
    out = thaw("snapshot", "keygen", "--out", str(tmp_path / "k"))
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)
    assert oct(os.stat(paths["private_key"]).st_mode & 0o777) == "0o600"
    again = thaw("snapshot", "keygen", "--out", str(tmp_path / "k"))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr


def test_verify_and_restore_cli_refuse_unsigned_and_tampered(tmp_path):
    key, pub = generate_keypair(tmp_path / "k")
    folder = publish_snapshot(tmp_path / "store")
    unsigned = thaw("snapshot", "verify", str(folder), "--no-compat", "--public-key", str(pub))
    assert unsigned.returncode == 1 and "unsigned" in unsigned.stderr
    restore = thaw("snapshot", "restore", str(folder), "--public-key", str(pub))
    assert restore.returncode == 1 and "refused" in restore.stderr and "unsigned" in restore.stderr
    sign_snapshot(folder, key)
    ok = thaw("snapshot", "verify", str(folder), "--no-compat", "--public-key", str(pub))
    assert ok.returncode == 0 and json.loads(ok.stdout)["signed_by"] == str(pub)
    manifest = folder / contract.MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('"root_pid": 1', '"root_pid": 2'))
    tampered = thaw("snapshot", "verify", str(folder), "--no-compat", "--public-key", str(pub))
    assert tampered.returncode == 1 and "changed after signing" in tampered.stderr


def test_store_with_a_signing_key_publishes_signed_snapshots(tmp_path):
    from agent.signing import verify_signature
    from agent.store import file_entries, verify

    key, pub = generate_keypair(tmp_path / "k")
    store = Store(tmp_path / "store", signing_key=key)
    staging = store.new_staging("snap-s")
    (staging / "data.bin").write_bytes(b"x" * 100)
    manifest = contract.Manifest(
        name="snap-s",
        key="v1-k",
        created="2026-11-23T00:00:00Z",
        image="i",
        kernel="6.1",
        arch="x86_64",
        criu_version="4.1.1",
        root_pid=1,
        files=file_entries(staging),
    )
    folder = store.publish(staging, manifest)
    verify_signature(folder, pub)
    verify(folder, check_compat=False)


def wait_for_signal(control: Path, timeout: float = 30.0) -> tuple[Signal, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sig in (Signal.RESTORE_FAILED, Signal.RESTORE_COMPLETE):
            if (control / sig.value).exists():
                return sig, (control / sig.value).read_text()
        time.sleep(0.05)
    raise AssertionError("the agent never answered the restore request")


def run_agent(root: Path, store: Store, verify_key=None):
    from agent.daemon import Agent
    from agent.local import LocalPods, LocalSink

    agent = Agent(LocalPods(root), LocalSink(root), store, node="local", verify_key=verify_key)
    threading.Thread(target=agent.run, name="agent", daemon=True).start()
    return agent


@pytest.fixture
def criu_root():
    if os.geteuid() != 0:
        pytest.skip("the agent needs root (CRIU, namespaces)")


@pytest.mark.criu
@pytest.mark.parametrize(
    ("snap_ns", "pod_ns", "signing", "reason"),
    [
        ("team-a", "team-b", False, "may not restore it"),
        ("team-a", "team-a", "unsigned", "unsigned"),
        ("team-a", "team-a", "other-key", "signed by a key other than"),
    ],
)
def test_agent_refuses_foreign_unsigned_or_wrongly_signed_snapshots(
    criu_root, tmp_path, snap_ns, pod_ns, signing, reason
):
    from agent.local import start_restore_pod

    root = tmp_path / "local"
    folder = publish_snapshot(root / "store", namespace=snap_ns)
    verify_key = None
    if signing:
        key, _ = generate_keypair(tmp_path / "k")
        verify_key = load_private_key(key).public_key()
        if signing == "other-key":
            sign_snapshot(folder, generate_keypair(tmp_path / "other")[0])
    agent = run_agent(root, Store(root / "store"), verify_key)
    pod = start_restore_pod(
        root, "thief", SLEEPER, key="v1-k", snapshot=folder.name, namespace=pod_ns
    )
    try:
        sig, text = wait_for_signal(pod.control)
        assert sig is Signal.RESTORE_FAILED and reason in text, text
    finally:
        pod.stop()
        agent.stop(wait=True)
