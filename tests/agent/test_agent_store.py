"""The artifact store: atomic publish, exact verification, path safety (plain files, no CRIU)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from agent.store import (
    SnapshotInvalid,
    Store,
    StoreError,
    compat_problem,
    new_name,
    validate_key,
    validate_name,
    verify,
)
from tests.support.snapshots import publish_fake
from thaw.contract import MANIFEST_FILE, Manifest, ManifestError


def _publish(store: Store, name: str = "snap-a", key: str = "k", payload: bytes = b"pages"):
    return publish_fake(store, name, key, payload, process_info=True)


def test_publish_is_a_rename_and_verify_passes(tmp_path):
    store = Store(tmp_path)
    folder, manifest = _publish(store)
    assert store.names() == ["snap-a"]
    assert list(store.staging_root.iterdir()) == []
    assert verify(folder, "4.1.1") == manifest
    assert {f.path for f in manifest.files} == {"criu/pages-1.img", "process.json"}


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: (f / "criu/pages-1.img").write_bytes(b"pagez"), "checksum mismatch"),
        (lambda f: (f / "criu/pages-1.img").write_bytes(b"pages!"), "bytes, manifest says"),
        (lambda f: (f / "criu/pages-1.img").unlink(), "missing files"),
        (lambda f: (f / "criu/extra.img").write_bytes(b""), "not in the manifest"),
        (lambda f: (f / MANIFEST_FILE).write_text("{not json"), "not valid JSON"),
        (lambda f: (f / MANIFEST_FILE).unlink(), "is missing"),
        (lambda f: os.symlink("/etc/passwd", f / "criu/link"), "symlinks are not allowed"),
    ],
)
def test_verify_refuses_damage(tmp_path, damage, reason):
    folder, _ = _publish(Store(tmp_path))
    damage(folder)
    with pytest.raises(SnapshotInvalid, match=reason):
        verify(folder, "4.1.1")


def test_verify_refuses_unsafe_manifest_paths_and_renamed_folders(tmp_path):
    store = Store(tmp_path)
    folder, manifest = _publish(store)
    bad = dataclasses.replace(
        manifest, files=(*manifest.files, dataclasses.replace(manifest.files[0], path="../x"))
    )
    (folder / MANIFEST_FILE).write_text(bad.to_json())
    with pytest.raises(SnapshotInvalid, match="unsafe path"):
        verify(folder, "4.1.1")
    (folder / MANIFEST_FILE).write_text(manifest.to_json())
    os.rename(folder, tmp_path / "other")
    with pytest.raises(SnapshotInvalid, match="names another snapshot"):
        verify(tmp_path / "other", "4.1.1")


def test_compatibility(tmp_path):
    _, m = _publish(Store(tmp_path))
    assert compat_problem(m, "4.1.1") is None
    assert "CRIU" in compat_problem(m, "3.17")
    assert "older" in compat_problem(dataclasses.replace(m, kernel="99.0.0"), None)
    assert "is for" in compat_problem(dataclasses.replace(m, arch="riscv128"), None)


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "/abs", "", ".", "..", "A", "a..b", "-a", "a" * 300]
)
def test_names_never_escape(tmp_path, name):
    store = Store(tmp_path)
    with pytest.raises(StoreError):
        store.path(name)


def test_keys_and_generated_names():
    assert validate_key("abc_1.2-3") == "abc_1.2-3"
    for bad in ("../k", "k/x", "", "a..b"):
        with pytest.raises(StoreError):
            validate_key(bad)
    name = new_name("My_Key/../Weird")
    assert validate_name(name) == name


def test_symlinked_snapshot_is_not_followed(tmp_path):
    store = Store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.root / "evil")
    assert store.names() == []
    with pytest.raises(StoreError, match="symlink"):
        store.path("evil")


def test_publish_refuses_existing_and_delete_is_atomic(tmp_path):
    store = Store(tmp_path)
    _publish(store)
    with pytest.raises(StoreError, match="cannot publish"):
        _publish(store)
    store.delete("snap-a")
    assert store.names() == []
    assert list(store.staging_root.iterdir()) == []  # the trash copy is gone too
    with pytest.raises(StoreError, match="no snapshot"):
        store.delete("snap-a")


def test_clean_stale_removes_only_dead_writers(tmp_path):
    store = Store(tmp_path)
    mine = store.new_staging("live")
    dead = store.new_staging("dead")
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    owner = json.loads((dead / ".owner").read_text())
    owner["pid"] = int(child.stdout)  # a process that has exited
    (dead / ".owner").write_text(json.dumps(owner))
    (store.staging_root / "no-owner.1234").mkdir()
    removed = store.clean_stale()
    assert sorted(removed) == sorted([dead.name, "no-owner.1234"])
    assert mine.exists()


def test_newest_for_key(tmp_path):
    store = Store(tmp_path)
    _publish(store, "a-1", key="k")
    _publish(store, "b-1", key="other")
    assert store.newest_for_key("k") == "a-1"
    assert store.newest_for_key("none") is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"files": [{"path": 5, "size": 1, "sha256": "x"}]}, "wrong type"),
        ({"files": [{"path": "a", "size": "1", "sha256": "x"}]}, "wrong type"),
        ({"files": [{"path": "a", "size": 1, "sha256": "x", "pieces": 3}]}, "wrong type"),
        ({"files": ["a"]}, "must be an object"),
        ({"source": {"namespace": 1}}, "source"),
        ({"source": {"planet": "x"}}, "malformed field"),
        ({"gpus": [{"model": ["a"]}]}, "gpus"),
        ({"timings": {"dump_s": "fast"}}, "timings"),
        ({"schema_version": True}, "schema_version"),
        ({"root_pid": 1.5}, "root_pid"),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_one_line_refusals(tmp_path, change, words):
    store = Store(tmp_path / "store")
    raw = json.loads((_publish(store)[0] / MANIFEST_FILE).read_text())
    with pytest.raises(ManifestError, match=words) as err:
        Manifest.from_json(json.dumps({**raw, **change}))
    assert "\n" not in str(err.value)


def test_deeply_nested_manifest_is_a_manifest_error():
    with pytest.raises(ManifestError, match="nested too deeply"):
        Manifest.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match="nested too deeply"):
        Manifest.from_json('{"a":' * 100_000 + "1" + "}" * 100_000)
