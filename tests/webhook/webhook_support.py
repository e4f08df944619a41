"""Shared helpers of the webhook tests: golden cases, snapshot stores, review bodies."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch

from thaw import contract
from webhook.config import InjectConfig, SidecarMode
from webhook.decision import decide
from webhook.server import admit, parse_review, review_response
from webhook.snapshots import ClusterSnapshots, DirectorySnapshots, NoSnapshots, SnapshotView

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
REGEN = os.environ.get("THAW_REGEN_GOLDEN") == "1"


def golden_cases() -> list[str]:
    return sorted(p.name.removesuffix(".review.json") for p in GOLDEN.glob("*.review.json"))


def load_case(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{name}.review.json").read_text())


def case_config(case: dict[str, Any]) -> InjectConfig:
    raw = dict(case["case"]["config"])
    if "sidecar_mode" in raw:
        raw["sidecar_mode"] = SidecarMode(raw["sidecar_mode"])
    return InjectConfig(**raw)


def write_manifest(root: Path, name: str, key: str, namespace: str, created: str) -> Path:
    """A published snapshot folder with a real manifest (no CRIU images needed here)."""
    manifest = contract.Manifest(
        name=name,
        key=key,
        created=created,
        image="vllm/vllm-openai:v0.6.4",
        kernel="6.1.0",
        arch="x86_64",
        criu_version="4.0",
        root_pid=301,
        source=contract.Source(namespace=namespace, pod=f"{name}-src", container="server"),
    )
    folder = root / name
    folder.mkdir(parents=True)
    (folder / contract.MANIFEST_FILE).write_text(manifest.to_json())
    return folder


def case_snapshots(case: dict[str, Any], root: Path) -> SnapshotView:
    """A real store directory holding the case's Ready snapshots for the pod's own key.

    ``"synced": false`` cases get a Snapshot-object cache whose API server cannot
    be reached and which therefore never listed.
    """
    if case["case"].get("synced") is False:
        return unsynced_cluster_view()
    request = case["review"]["request"]
    ns = request["namespace"]
    key = decide(request["object"], ns, case_config(case), NoSnapshots()).key or "v2-none"
    root.mkdir(parents=True, exist_ok=True)
    for snap in case["case"]["snapshots"]:
        write_manifest(root, snap["name"], key, ns, snap["created"])
    return DirectorySnapshots(root)


def unsynced_cluster_view() -> ClusterSnapshots:
    """A cache pointed at the discard port (connection refused), never started."""
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:9"
    view = ClusterSnapshots(client.ApiClient(cfg))
    assert not view.synced
    return view


def run_case(case: dict[str, Any], store: Path) -> tuple[dict[str, Any], Any, Any]:
    """(AdmissionReview response, pure mutation result, original patched by the response)."""
    body = json.dumps(case["review"]).encode()
    request = parse_review(body)
    config = case_config(case)
    injection = admit(request, config, case_snapshots(case, store))
    response = review_response(request["uid"], request["object"], injection)
    patched = copy.deepcopy(case["review"]["request"]["object"])
    r = response["response"]
    if "patch" in r:
        import base64

        patched = jsonpatch.apply_patch(patched, json.loads(base64.b64decode(r["patch"])))
    return response, injection, patched


def expected_of(response: dict[str, Any], patched: Any) -> dict[str, Any]:
    r = response["response"]
    return {
        "decision": r["auditAnnotations"]["decision"],
        "warnings": r["warnings"],
        "patched": patched if "patch" in r else None,
    }
