"""Mutations that a v1.20 API server cannot judge, checked against 1.29-1.33 schemas.

Native sidecars (an init container with ``restartPolicy: Always``) only exist
from Kubernetes 1.29, so the real-server tests run the webhook in container
mode. Here the same mutation code (``thaw inject``, the webhook's pure
function) is applied to a JSON fixture in both modes, checkpoint and restore,
and the result must validate strictly (unknown fields are errors) for every
supported version. The webhook's golden outputs get the same check.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kube_control_plane import thaw_cli

from thaw import contract
from webhook.snapshot_key import snapshot_key

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "gpu-deployment.json"
GOLDEN = HERE.parent / "golden"
VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")


def _store_with_ready_snapshot(root: Path) -> Path:
    """An artifact store holding one published snapshot for the fixture's key."""
    deployment = json.loads(FIXTURE.read_text())
    spec = deployment["spec"]["template"]["spec"]
    namespace = deployment["metadata"]["namespace"]
    key = snapshot_key(namespace, spec, spec["containers"][0])
    manifest = contract.Manifest(
        name="llm-snap",
        key=key,
        created="2026-11-20T10:00:00Z",
        image=spec["containers"][0]["image"],
        kernel="6.1.0",
        arch="x86_64",
        criu_version="4.1",
        root_pid=301,
        source=contract.Source(namespace=namespace, pod="llm-0", container="server"),
    )
    folder = root / "llm-snap"
    folder.mkdir(parents=True)
    (folder / contract.MANIFEST_FILE).write_text(manifest.to_json())
    return root


def _inject(sidecar_mode: str, store: Path | None) -> dict:
    argv = [*thaw_cli(), "inject", "-f", str(FIXTURE), f"--sidecar-mode={sidecar_mode}"]
    if store:
        argv.append(f"--snapshots={store}")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize("sidecar_mode", ["native", "container"])
@pytest.mark.parametrize("mode", [contract.InjectedMode.CHECKPOINT, contract.InjectedMode.RESTORE])
def test_injected_workload_validates_strictly(sidecar_mode, mode, tmp_path):
    store = _store_with_ready_snapshot(tmp_path / "store") if mode == "restore" else None
    injected = _inject(sidecar_mode, store)
    template = injected["spec"]["template"]
    assert template["metadata"]["annotations"][contract.ANNOTATION_INJECTED] == mode
    init = template["spec"].get("initContainers") or []
    if sidecar_mode == "native":
        sidecar = next(c for c in init if c["name"] == contract.SIDECAR_CONTAINER)
        assert sidecar["restartPolicy"] == "Always"
    else:
        names = [c["name"] for c in template["spec"]["containers"]]
        assert contract.SIDECAR_CONTAINER in names
        assert all("restartPolicy" not in c for c in init)
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(injected, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{sidecar_mode}/{mode} injection invalid for {version}: {e}")


def test_strict_validation_catches_native_sidecars_on_old_versions():
    """The check above can fail: a 1.27 API has no restartPolicy on containers."""
    injected = _inject("native", None)
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(injected, "1.27.0", strict=True)


def _golden_patched() -> list[Path]:
    """Golden webhook outputs that patch something (no-op decisions have nothing to check)."""
    return [
        p
        for p in sorted(GOLDEN.glob("*.expected.json"))
        if json.loads(p.read_text()).get("patched") is not None
    ]


@pytest.mark.parametrize("path", _golden_patched(), ids=lambda p: p.name.split(".")[0])
def test_golden_webhook_outputs_validate_strictly(path):
    patched = json.loads(path.read_text())["patched"]
    for version in VERSIONS:
        kubernetes_validate.validate(patched, version, strict=True)
