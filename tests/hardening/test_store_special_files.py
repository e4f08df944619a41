"""Whatever sits where a manifest or signature should be, every reader answers in one line, fast.

Real FIFOs, real character devices, real directories and real malformed files
in a real published snapshot: the store's verify, the signature check, the CLI
(verify, inspect, restore), the restore init step and the offline webhook's
snapshot reader must refuse (or skip) them without blocking, without reading
without bound and without a traceback.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hardening_support import publish_snapshot

from agent.signing import SignatureInvalid, generate_keypair, sign_snapshot, verify_signature
from agent.store import SnapshotInvalid, Store, verify
from sidecar.restore_init import run_restore_init
from thaw import contract
from thaw.safe_files import MAX_MANIFEST_BYTES, UnsafeFile, read_small_file
from webhook.snapshots import DirectorySnapshots

THAW = [sys.executable, "-m", "thaw.cli"]


def within(seconds: float, fn, *args):
    """fn(*args) in a thread; fail (not hang) if it has not returned in time."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # handed to the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} blocked for {seconds}s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _valid_manifest(folder: Path) -> dict:
    return json.loads((folder / contract.MANIFEST_FILE).read_text())


def make_fifo(p: Path) -> None:
    os.mkfifo(p)


def make_chardev(p: Path) -> None:
    os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers


def make_zero_link(p: Path) -> None:
    p.symlink_to("/dev/zero")


def make_dir(p: Path) -> None:
    p.mkdir()


def make_huge(p: Path) -> None:
    with open(p, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: costs no disk


def make_nested(p: Path) -> None:
    p.write_text("[" * 200_000 + "]" * 200_000)


def make_nested_field(p: Path) -> None:
    m = _valid_manifest(p.parent)
    m["timings"] = {"x": json.loads("[" * 500 + "]" * 500)}
    p.write_text(json.dumps(m))


def make_wrong_path_type(p: Path) -> None:
    m = _valid_manifest(p.parent)
    m["files"][0]["path"] = 5
    p.write_text(json.dumps(m))


def make_wrong_source_type(p: Path) -> None:
    m = _valid_manifest(p.parent)
    m["source"] = {"namespace": ["ml"]}
    p.write_text(json.dumps(m))


KINDS = {
    "fifo": (make_fifo, "FIFO"),
    "chardev": (make_chardev, "character device"),
    "link-to-dev-zero": (make_zero_link, "symlink"),
    "directory": (make_dir, "directory"),
    "huge": (make_huge, "more than"),
    "nested": (make_nested, "nested too deeply"),
    "nested-field": (make_nested_field, "timings"),
    "path-not-a-string": (make_wrong_path_type, "wrong type"),
    "source-not-strings": (make_wrong_source_type, "source"),
}


@pytest.fixture(params=sorted(KINDS))
def bad_snapshot(request, tmp_path: Path) -> tuple[Path, str]:
    """A store with a good snapshot and a bad one whose manifest.json is KINDS[param]."""
    store = tmp_path / "store"
    publish_snapshot(store, "good-snap", key="k", namespace="ml")
    folder = publish_snapshot(store, "bad-snap", key="k", namespace="ml")
    manifest = folder / contract.MANIFEST_FILE
    make, words = KINDS[request.param]
    if request.param not in ("nested-field", "path-not-a-string", "source-not-strings"):
        manifest.unlink()
    make(manifest)
    return folder, words


def test_verify_refuses_in_one_line(bad_snapshot) -> None:
    folder, words = bad_snapshot
    with pytest.raises(SnapshotInvalid, match=words) as err:
        within(10, verify, folder, None, False)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_store_list_and_newest_skip_it(bad_snapshot) -> None:
    folder, _ = bad_snapshot
    store = Store(folder.parent)
    rows = {name: (m, problem) for name, m, problem in within(10, store.list)}
    if "bad-snap" in rows:  # a directory or a FIFO is not even listed
        assert rows["bad-snap"][0] is None and rows["bad-snap"][1]
    assert rows["good-snap"][0] is not None
    assert within(10, store.newest_for_key, "k") == "good-snap"


def test_offline_webhook_skips_it_and_still_decides(bad_snapshot, caplog) -> None:
    folder, _ = bad_snapshot
    view = DirectorySnapshots(folder.parent)
    ref = within(10, view.find_ready, "k", "ml")
    assert ref is not None and ref.name == "good-snap"


def test_restore_init_cold_starts_with_a_reason(bad_snapshot, tmp_path: Path) -> None:
    folder, _ = bad_snapshot
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    result = within(10, run_restore_init, folder.parent, "bad-snap", ctl, 2, lambda: ())
    assert result.signal == contract.Signal.RESTORE_FAILED
    assert (ctl / contract.Signal.RESTORE_FAILED).exists()


@pytest.mark.parametrize("action", ["verify", "inspect", "restore"])
def test_cli_answers_in_one_line(bad_snapshot, action: str) -> None:
    folder, _ = bad_snapshot
    args = [action, str(folder)] + (["--no-compat"] if action == "verify" else [])
    proc = subprocess.run([*THAW, "snapshot", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("thaw:")]
    assert len(lines) == 1, proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "chardev", "link-to-dev-zero", "directory", "huge"])
def test_signature_file_of_the_wrong_kind_is_refused(tmp_path: Path, kind: str) -> None:
    key, pub = generate_keypair(tmp_path / "keys")
    folder = publish_snapshot(tmp_path / "store", "signed")
    sign_snapshot(folder, key)
    sig = folder / contract.MANIFEST_SIGNATURE_FILE
    sig.unlink()
    if kind == "huge":
        with open(sig, "wb") as f:
            f.truncate(1 << 30)
    else:
        KINDS[kind][0](sig)
    with pytest.raises(SignatureInvalid, match=r"manifest\.sig"):
        within(10, verify_signature, folder, pub)


def test_read_small_file_reads_regular_files_exactly(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    assert read_small_file(p, 100) == b"x" * 100
    with pytest.raises(UnsafeFile, match="more than"):
        read_small_file(p, 99)
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "absent", 10)


POD = """\
apiVersion: v1
kind: Pod
metadata: {name: llm, namespace: ml, labels: {thaw.dev/enabled: "true"}}
spec:
  containers:
  - name: server
    image: registry.invalid/worker:1
    command: ["python", "-m", "server"]
    readinessProbe: {httpGet: {path: /health, port: 8000}}
"""


def test_thaw_inject_with_snapshots_skips_it_in_one_log_line(bad_snapshot, tmp_path: Path) -> None:
    folder, _ = bad_snapshot
    proc = subprocess.run(
        [*THAW, "inject", "-f", "-", "--snapshots", str(folder.parent)],
        input=POD,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "internal-error" not in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if "skipping snapshot bad-snap" in line]
    assert len(skipped) == 1, proc.stderr
    assert contract.ANNOTATION_INJECTED in proc.stdout
