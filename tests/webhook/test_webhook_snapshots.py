"""Snapshot views: a real store directory, and the index the cluster watch feeds."""

from __future__ import annotations

import logging

from webhook_support import write_manifest

from thaw import contract
from webhook.snapshots import DirectorySnapshots, SnapshotIndex

KEY = "v2-" + "a" * 40


def test_directory_view_skips_staging_and_broken_manifests(tmp_path, caplog):
    write_manifest(tmp_path, "good", KEY, "ml", "2026-11-20T00:00:00Z")
    write_manifest(
        tmp_path / contract.STORE_STAGING_DIR, "half-built", KEY, "ml", "2026-11-22T00:00:00Z"
    )
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / contract.MANIFEST_FILE).write_text("{not json")
    (tmp_path / "old-schema").mkdir()
    (tmp_path / "old-schema" / contract.MANIFEST_FILE).write_text('{"schema_version": 0}')
    (tmp_path / "no-manifest").mkdir()
    (tmp_path / "stray-file").write_text("x")
    with caplog.at_level(logging.WARNING, logger="webhook.snapshots"):
        found = DirectorySnapshots(tmp_path).find_ready(KEY, "ml")
    assert found is not None and found.name == "good" and found.artifact == "good"
    logged = caplog.text
    for name in ("garbage", "old-schema", "no-manifest"):
        assert f"skipping snapshot {name}" in logged
    assert "half-built" not in logged


def test_directory_view_never_crosses_namespaces(tmp_path):
    write_manifest(tmp_path, "theirs", KEY, "team-b", "2026-11-20T00:00:00Z")
    view = DirectorySnapshots(tmp_path)
    assert view.find_ready(KEY, "team-a") is None
    assert view.find_ready(KEY, "team-b").name == "theirs"


def test_directory_view_picks_newest_and_sees_new_snapshots(tmp_path):
    view = DirectorySnapshots(tmp_path)
    assert view.find_ready(KEY, "ml") is None
    write_manifest(tmp_path, "older", KEY, "ml", "2026-11-01T00:00:00Z")
    assert view.find_ready(KEY, "ml").name == "older"
    write_manifest(tmp_path, "newer", KEY, "ml", "2026-11-20T00:00:00Z")
    write_manifest(tmp_path, "other-key", "v2-" + "b" * 40, "ml", "2026-11-30T00:00:00Z")
    assert view.find_ready(KEY, "ml").name == "newer"


def test_missing_directory_is_no_snapshots(tmp_path):
    assert DirectorySnapshots(tmp_path / "absent").find_ready(KEY, "ml") is None


def snapshot(name, ns="ml", key=KEY, phase="Ready", created="2026-11-20T00:00:00Z", rv="1"):
    return {
        "apiVersion": contract.CRD_API_VERSION,
        "kind": contract.CRD_KIND,
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": rv,
            "creationTimestamp": created,
            "labels": {contract.LABEL_SNAPSHOT_KEY: key},
        },
        "spec": {contract.SPEC_KEY: key, contract.SPEC_ARTIFACT: f"{name}-art"},
        "status": {contract.STATUS_PHASE: phase},
    }


def test_index_follows_list_and_watch_events():
    index = SnapshotIndex()
    index.replace([snapshot("a", phase="Checkpointing"), snapshot("x", ns="other")])
    assert index.find_ready(KEY, "ml") is None
    index.apply("MODIFIED", snapshot("a", phase=contract.Phase.READY))
    ref = index.find_ready(KEY, "ml")
    assert ref.name == "a" and ref.artifact == "a-art" and ref.namespace == "ml"
    index.apply("ADDED", snapshot("b", created="2026-11-21T00:00:00Z"))
    assert index.find_ready(KEY, "ml").name == "b"
    index.apply("MODIFIED", snapshot("b", phase="Failed"))
    assert index.find_ready(KEY, "ml").name == "a"
    index.apply("DELETED", snapshot("a"))
    assert index.find_ready(KEY, "ml") is None
    assert index.find_ready(KEY, "other").name == "x"
    index.replace([])  # a re-list after 410 Gone drops what vanished meanwhile
    assert index.find_ready(KEY, "other") is None


def test_index_ignores_objects_without_a_key():
    index = SnapshotIndex()
    broken = snapshot("a")
    del broken["spec"][contract.SPEC_KEY]
    index.replace([broken, {"metadata": None}])
    assert index.find_ready(KEY, "ml") is None
