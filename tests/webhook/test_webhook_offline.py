"""``thaw inject``: the webhook's mutation on manifests, through the real CLI."""

from __future__ import annotations

import copy
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from webhook_support import load_case, write_manifest

from thaw import contract
from thaw.cli import main
from webhook.config import InjectConfig
from webhook.mutate import inject
from webhook.snapshots import NoSnapshots

POD = load_case("checkpoint-native")["review"]["request"]["object"]


def template() -> dict:
    pod = copy.deepcopy(POD)
    meta = {"labels": {"app": "llm", contract.LABEL_ENABLED: "true"}}
    spec = pod["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if not v["name"].startswith("kube-api")]
    for c in spec["containers"]:
        c["volumeMounts"] = [m for m in c["volumeMounts"] if not m["name"].startswith("kube-api")]
    return {"metadata": meta, "spec": spec}


def workload(kind: str, api: str = "apps/v1", namespace: str | None = "ml") -> dict:
    meta = {"name": f"llm-{kind.lower()}"} | ({"namespace": namespace} if namespace else {})
    sel = {"selector": {"matchLabels": {"app": "llm"}}}
    tpl = template()
    if kind == "Pod":
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**meta, **tpl["metadata"]},
            "spec": tpl["spec"],
        }
    if kind == "CronJob":
        tpl["spec"]["restartPolicy"] = "OnFailure"
        job = {"template": tpl}
        return {
            "apiVersion": "batch/v1",
            "kind": kind,
            "metadata": meta,
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": job}},
        }
    if kind == "Job":
        tpl["spec"]["restartPolicy"] = "OnFailure"
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": meta, "spec": {"template": tpl}}
    extra = {"serviceName": "llm"} if kind == "StatefulSet" else {}
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": meta,
        "spec": {**sel, **extra, "template": tpl},
    }


KINDS = ["Pod", "Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job", "CronJob"]
OTHER = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "llm"},
    "spec": {"ports": [{"port": 80}], "selector": {"app": "llm"}},
}


def pod_template(doc: dict) -> dict:
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def run_inject(tmp_path, docs, *args, capsys) -> tuple[list, str]:
    src = tmp_path / "in.yaml"
    src.write_text(yaml.safe_dump_all(docs))
    assert main(["inject", "-f", str(src), *args]) == 0
    out, err = capsys.readouterr()
    return list(yaml.safe_load_all(out)), err


def test_every_workload_kind_gets_the_webhook_mutation(tmp_path, capsys):
    docs = [workload(k) for k in KINDS] + [OTHER]
    out, err = run_inject(tmp_path, docs, capsys=capsys)
    assert len(out) == len(docs) and out[-1] == OTHER
    for doc_in, doc_out in zip(docs, out, strict=False):
        if doc_in is OTHER:
            continue
        kubernetes_validate.validate(doc_out, "1.30", strict=True)
        # Exactly what the admission path would do to the same template.
        expected = inject(pod_template(doc_in), "ml", InjectConfig(), NoSnapshots()).pod
        assert pod_template(doc_out) == expected
        assert f"{doc_in['kind']}/" in err
    injected = pod_template(out[1])["metadata"]["annotations"][contract.ANNOTATION_INJECTED]
    assert injected == contract.InjectedMode.CHECKPOINT


def test_namespace_defaults_to_default_and_snapshots_dir_gives_restore(tmp_path, capsys):
    doc = workload("Deployment", namespace=None)
    key = inject(pod_template(doc), "default", InjectConfig(), NoSnapshots()).decision.key
    store = tmp_path / "store"
    write_manifest(store, "snap-1", key, "default", "2026-11-20T00:00:00Z")
    out, _ = run_inject(tmp_path, [doc], "--snapshots", str(store), capsys=capsys)
    ann = pod_template(out[0])["metadata"]["annotations"]
    assert ann[contract.ANNOTATION_SNAPSHOT] == "snap-1"
    assert ann[contract.ANNOTATION_INJECTED] == contract.InjectedMode.RESTORE


def test_inject_is_idempotent_on_its_own_output(tmp_path, capsys):
    docs = [workload(k) for k in KINDS]
    once, _ = run_inject(tmp_path, docs, capsys=capsys)
    twice, err = run_inject(tmp_path, once, capsys=capsys)
    assert twice == once and "already-injected" in err


def test_stdin_and_skips_pass_through(tmp_path):
    plain = workload("Deployment")
    del pod_template(plain)["metadata"]["labels"][contract.LABEL_ENABLED]
    proc = subprocess.run(
        [sys.executable, "-m", "thaw.cli", "inject", "-f", "-"],
        input=yaml.safe_dump_all([plain, OTHER]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert list(yaml.safe_load_all(proc.stdout)) == [plain, OTHER]
    assert "no-opt-in" in proc.stderr


@pytest.mark.parametrize(("content", "needle"), [("a: [unclosed", "not valid YAML")])
def test_bad_yaml_is_a_clear_error(tmp_path, capsys, content, needle):
    src = tmp_path / "bad.yaml"
    src.write_text(content)
    assert main(["inject", "-f", str(src)]) == 1
    assert needle in capsys.readouterr().err


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["inject", "-f", str(tmp_path / "absent.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_list_documents_are_walked(tmp_path, capsys):
    """``kubectl get deploy -o yaml`` prints a List."""
    listing = {"apiVersion": "v1", "kind": "List", "items": [workload("Deployment"), OTHER]}
    out, err = run_inject(tmp_path, [listing], capsys=capsys)
    (doc,) = out
    assert doc["items"][1] == OTHER
    assert pod_template(doc["items"][0])["metadata"]["annotations"][contract.ANNOTATION_INJECTED]
    assert "Deployment/llm-deployment" in err
