"""The snapshot key: equal for replicas of one template, different when the worker would differ."""

from __future__ import annotations

import copy
import re

import pytest
from webhook_support import load_case, write_manifest

from webhook.config import InjectConfig
from webhook.decision import Reason
from webhook.mutate import inject
from webhook.snapshot_key import snapshot_key
from webhook.snapshots import DirectorySnapshots, NoSnapshots

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def base_pod() -> dict:
    return copy.deepcopy(load_case("checkpoint-native")["review"]["request"]["object"])


def key_of(pod: dict, ns: str = "inference") -> str:
    return snapshot_key(ns, pod["spec"], pod["spec"]["containers"][0])


def test_key_is_a_label_value():
    key = key_of(base_pod())
    assert len(key) <= 63 and LABEL_VALUE.match(key) and key.startswith("v2-")


def other_replica(pod: dict) -> dict:
    """What the ReplicaSet's next pod looks like: new name, uid, token volume suffix."""
    p = copy.deepcopy(pod)
    meta = p["metadata"]
    meta["generateName"] = "llm-7f8e9d-"
    meta["name"] = "llm-7f8e9d-x2k4p"
    meta["uid"] = "0b0e7c1e-0000-4000-8000-000000000001"
    meta["labels"] = {**meta["labels"], "pod-template-hash": "7f8e9d", "extra": "label"}
    meta["annotations"] = {"kubectl.kubernetes.io/restartedAt": "2026-11-21T00:00:00Z"}
    for v in p["spec"]["volumes"]:
        if v["name"].startswith("kube-api-access-"):
            v["name"] = "kube-api-access-zz9qp"
    for m in p["spec"]["containers"][0]["volumeMounts"]:
        if m["name"].startswith("kube-api-access-"):
            m["name"] = "kube-api-access-zz9qp"
    p["spec"]["nodeName"] = "gpu-node-7"
    return p


def test_replicas_of_one_template_share_the_key():
    pod = base_pod()
    assert key_of(pod) == key_of(other_replica(pod))


def _set(path):
    def change(pod):
        node = pod
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = "changed"

    return change


C = ("spec", "containers", 0)


@pytest.mark.parametrize(
    "change",
    [
        _set((*C, "image")),
        lambda p: p["spec"]["containers"][0]["command"].append("--x"),
        lambda p: p["spec"]["containers"][0]["args"].append("--y"),
        _set((*C, "env", 0, "value")),
        lambda p: p["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"].update(
            name="other"
        ),
        lambda p: p["spec"]["containers"][0]["resources"]["limits"].update(memory="64Gi"),
        _set((*C, "volumeMounts", 0, "mountPath")),
        lambda p: (
            p["spec"]["volumes"][0].update(emptyDir={})
            or p["spec"]["volumes"][0].pop("persistentVolumeClaim")
        ),
        lambda p: p["spec"]["volumes"].append({"name": "scratch", "emptyDir": {}}),
        _set((*C, "workingDir")),
        _set((*C, "name")),
    ],
)
def test_what_shapes_the_worker_changes_the_key(change):
    pod = base_pod()
    changed = copy.deepcopy(pod)
    change(changed)
    assert key_of(changed) != key_of(pod)


def test_namespace_is_part_of_the_key():
    pod = base_pod()
    assert key_of(pod, "a") != key_of(pod, "b")


def test_checkpoint_pod_and_later_restore_pod_share_the_key(tmp_path):
    """The first replica is checkpointed under key K; the next replica restores from K."""
    config, ns = InjectConfig(), "inference"
    first = inject(base_pod(), ns, config, NoSnapshots())
    assert first.decision.reason is Reason.CHECKPOINT_NO_SNAPSHOT
    key = first.pod["metadata"]["annotations"]["thaw.dev/snapshot-key"]
    write_manifest(tmp_path, "llm-snap", key, ns, "2026-11-20T10:05:00Z")

    second = inject(other_replica(base_pod()), ns, config, DirectorySnapshots(tmp_path))
    assert second.decision.reason is Reason.RESTORE_SNAPSHOT_READY
    assert second.pod["metadata"]["annotations"]["thaw.dev/snapshot-key"] == key
    assert second.pod["metadata"]["annotations"]["thaw.dev/snapshot"] == "llm-snap"


S = ("spec",)
SECRET = {"name": "creds", "secret": {"secretName": "reader", "defaultMode": 420}}


def _with_volume(volume: dict, path: str = "/etc/creds"):
    def change(pod):
        pod["spec"]["volumes"].append(copy.deepcopy(volume))
        pod["spec"]["containers"][0]["volumeMounts"].append(
            {"name": volume["name"], "mountPath": path, "readOnly": True}
        )

    return change


def _creds(pod: dict) -> dict:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == "creds")


def _secret_pod() -> dict:
    pod = base_pod()
    _with_volume(SECRET)(pod)
    return pod


PRIVILEGE_CHANGES = {
    "pod runAsUser": lambda p: p["spec"].update(securityContext={"runAsUser": 0}),
    "pod fsGroup": lambda p: p["spec"]["securityContext"].update(fsGroup=2000),
    "container privileged": lambda p: p["spec"]["containers"][0].update(
        securityContext={"privileged": True}
    ),
    "container capabilities": lambda p: p["spec"]["containers"][0].update(
        securityContext={"capabilities": {"add": ["SYS_ADMIN"]}}
    ),
    "serviceAccountName": lambda p: p["spec"].update(
        serviceAccountName="admin", serviceAccount="admin"
    ),
    "automountServiceAccountToken": lambda p: p["spec"].update(automountServiceAccountToken=False),
    "runtimeClassName": lambda p: p["spec"].update(runtimeClassName="gvisor"),
    "hostNetwork": lambda p: p["spec"].update(hostNetwork=True),
    "hostIPC": lambda p: p["spec"].update(hostIPC=True),
    "hostPID": lambda p: p["spec"].update(hostPID=True),
    "hostUsers": lambda p: p["spec"].update(hostUsers=False),
    "secret name": lambda p: _creds(p)["secret"].update(secretName="admin"),
    "secret items": lambda p: _creds(p)["secret"].update(items=[{"key": "token", "path": "t"}]),
    "volume device": lambda p: p["spec"]["containers"][0].update(
        volumeDevices=[{"name": "models", "devicePath": "/dev/xvda"}]
    ),
    "pvc claim": lambda p: p["spec"]["volumes"][0]["persistentVolumeClaim"].update(
        claimName="other"
    ),
    "configMap name": _with_volume({"name": "cfg", "configMap": {"name": "a"}}),
    "hostPath path": _with_volume({"name": "host", "hostPath": {"path": "/etc"}}),
    "projected secret": _with_volume(
        {"name": "p", "projected": {"sources": [{"secret": {"name": "admin"}}]}}
    ),
    "token audience": _with_volume(
        {
            "name": "vault-token",
            "projected": {
                "sources": [{"serviceAccountToken": {"audience": "vault", "path": "token"}}]
            },
        }
    ),
}


@pytest.mark.parametrize("change", PRIVILEGE_CHANGES.values(), ids=PRIVILEGE_CHANGES.keys())
def test_privilege_changes_the_key(change):
    """A restored process keeps the dumped one's credentials: never share across privilege."""
    pod = _secret_pod()
    changed = copy.deepcopy(pod)
    change(changed)
    assert key_of(changed) != key_of(pod)
    # ... while the replicas of either template still share their key.
    assert key_of(changed) == key_of(other_replica(changed))


def test_same_secret_under_other_volumes_differs():
    pod_a, pod_b = _secret_pod(), base_pod()
    _with_volume({**SECRET, "secret": {"secretName": "admin"}})(pod_b)
    assert key_of(pod_a) != key_of(pod_b)


def test_a_secret_at_the_token_path_is_not_mistaken_for_the_token():
    """Only the admission plugin's own token volume shape is left out, whatever the mount."""
    pod = base_pod()
    sa_path = "/var/run/secrets/kubernetes.io/serviceaccount"
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    token = next(m for m in mounts if m["mountPath"] == sa_path)
    spoof = copy.deepcopy(pod)
    for v in spoof["spec"]["volumes"]:
        if v["name"] == token["name"]:
            v.pop("projected")
            v["secret"] = {"secretName": "cluster-admin-token"}
    assert key_of(spoof) != key_of(pod)


def test_manifest_template_and_admitted_pod_share_the_key():
    """``thaw inject`` keys the template; the webhook keys the pod the API server defaulted."""
    admitted = _secret_pod()
    template = copy.deepcopy(admitted)
    spec = template["spec"]
    for field in ("serviceAccountName", "serviceAccount", "securityContext"):
        spec.pop(field)
    spec["volumes"] = [v for v in spec["volumes"] if not v["name"].startswith("kube-api-")]
    spec["volumes"][-1]["secret"].pop("defaultMode")
    c = spec["containers"][0]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if not m["name"].startswith("kube-api-")]
    assert key_of(template) == key_of(admitted)
