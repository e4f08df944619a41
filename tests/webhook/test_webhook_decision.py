"""Decision details the golden files do not pin down on their own."""

from __future__ import annotations

import copy

from webhook_support import load_case, write_manifest

from webhook.config import InjectConfig
from webhook.decision import Reason, decide
from webhook.server import request_namespace
from webhook.snapshots import DirectorySnapshots, NoSnapshots

POD = load_case("checkpoint-native")["review"]["request"]["object"]


def pod(**annotations) -> dict:
    p = copy.deepcopy(POD)
    p["metadata"]["annotations"] = annotations
    return p


def test_user_mount_on_the_control_dir_is_a_conflict():
    p = pod()
    p["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "models", "mountPath": "/var/run/thaw/"}
    )
    d = decide(p, "inference", InjectConfig(), NoSnapshots())
    assert d.reason is Reason.CONTROL_DIR_CONFLICT and "/var/run/thaw" in d.detail


def test_restore_mode_uses_a_snapshot_when_there_is_one(tmp_path):
    key = decide(pod(), "inference", InjectConfig(), NoSnapshots()).key
    write_manifest(tmp_path, "s1", key, "inference", "2026-11-20T00:00:00Z")
    d = decide(
        pod(**{"thaw.dev/mode": "restore"}),
        "inference",
        InjectConfig(),
        DirectorySnapshots(tmp_path),
    )
    assert d.reason is Reason.RESTORE_SNAPSHOT_READY and d.snapshot.name == "s1" and d.key == key


def test_own_namespace_follows_the_config():
    config = InjectConfig(own_namespace="platform")
    assert decide(pod(), "platform", config, NoSnapshots()).reason is Reason.EXCLUDED_NAMESPACE
    assert decide(pod(), "thaw-system", config, NoSnapshots()).inject


def test_namespace_comes_from_the_request_then_the_object():
    assert request_namespace({"namespace": "a", "object": {"metadata": {"namespace": "b"}}}) == "a"
    assert request_namespace({"object": {"metadata": {"namespace": "b"}}}) == "b"
    assert request_namespace({"object": None}) == "default"


def test_messages_name_the_reason():
    d = decide(pod(**{"thaw.dev/mode": "off"}), "inference", InjectConfig(), NoSnapshots())
    assert d.message() == "thaw.dev: skipped (mode-off)"
    d = decide(pod(), "inference", InjectConfig(), NoSnapshots())
    assert d.message().startswith("thaw.dev: injected checkpoint (checkpoint-no-snapshot): key v2-")


def test_injected_containers_are_non_root_unless_the_pod_insists_on_root():
    from webhook.mutate import inject

    def sidecar_context(p):
        out = inject(p, "inference", InjectConfig(), NoSnapshots()).pod
        return out["spec"]["initContainers"][0]["securityContext"]

    assert sidecar_context(pod())["runAsNonRoot"] is True
    root = pod()
    root["spec"]["securityContext"] = {"runAsUser": 0}
    context = sidecar_context(root)
    assert "runAsNonRoot" not in context and context["allowPrivilegeEscalation"] is False


def test_user_written_snapshot_annotation_never_survives_injection(tmp_path):
    """A tenant naming a snapshot (say, another namespace's) gets the webhook's choice or none."""
    from webhook.mutate import inject

    forged = {"thaw.dev/snapshot": "team-b-secret-model", "thaw.dev/mode": "auto"}
    checkpoint = inject(pod(**forged), "inference", InjectConfig(), NoSnapshots())
    assert checkpoint.decision.reason is Reason.CHECKPOINT_NO_SNAPSHOT
    assert "thaw.dev/snapshot" not in checkpoint.pod["metadata"]["annotations"]

    key = checkpoint.decision.key
    write_manifest(tmp_path, "team-b-secret-model", key, "team-b", "2026-11-21T00:00:00Z")
    write_manifest(tmp_path, "own-snap", key, "inference", "2026-11-20T00:00:00Z")
    restore = inject(pod(**forged), "inference", InjectConfig(), DirectorySnapshots(tmp_path))
    assert restore.decision.reason is Reason.RESTORE_SNAPSHOT_READY
    assert restore.pod["metadata"]["annotations"]["thaw.dev/snapshot"] == "own-snap"
