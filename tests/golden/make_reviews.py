"""Writes the golden AdmissionReview inputs (``*.review.json``) from real pod shapes.

Run from the repository root after changing a case, then
``THAW_REGEN_GOLDEN=1 pytest tests/webhook/test_webhook_golden.py`` to refresh
the expected outputs, and review both diffs. The pods look like what the API
server sends a mutating webhook for a Deployment's pod: generateName only,
defaults applied, managedFields, and the service-account token volume that
the ServiceAccount admission plugin adds first.
"""

import copy
import json
import pathlib
import sys
import tempfile

OUT = pathlib.Path(__file__).resolve().parent


def managed():
    return [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-11-20T10:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}}}},
        }
    ]


def container(name, image, command=None, args=None, sa="kube-api-access-7xq2k", **extra):
    c = {"name": name, "image": image}
    if command is not None:
        c["command"] = command
    if args is not None:
        c["args"] = args
    c.update(extra)
    c.setdefault("resources", {})
    c["volumeMounts"] = [
        *c.get("volumeMounts", []),
        {
            "name": sa,
            "readOnly": True,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
        },
    ]
    c.update(
        {
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        }
    )
    return c


def probe(handler, period=10):
    """A readinessProbe as the API server stores it: every default filled in."""
    return {
        **handler,
        "initialDelaySeconds": 0,
        "timeoutSeconds": 1,
        "periodSeconds": period,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


def http_probe():
    """vLLM's health endpoint on the container's named port."""
    return probe({"httpGet": {"path": "/health", "port": "http", "scheme": "HTTP"}}, 5)


def sa_volume(name="kube-api-access-7xq2k"):
    return {
        "name": name,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
            "defaultMode": 420,
        },
    }


def deployment_pod(
    ns="inference",
    labels=None,
    annotations=None,
    containers=None,
    init=None,
    volumes=None,
    sa="kube-api-access-7xq2k",
):
    lab = {"app": "llm", "pod-template-hash": "6d5f9b7c4d", "thaw.dev/enabled": "true"}
    if labels is not None:
        lab = labels
    meta = {
        "generateName": "llm-6d5f9b7c4d-",
        "namespace": ns,
        "labels": lab,
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "llm-6d5f9b7c4d",
                "uid": "5f1f3a52-8a5e-4a4e-9f0a-2b4c6d8e0f11",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "managedFields": managed(),
    }
    if annotations:
        meta["annotations"] = annotations
    if containers is None:
        containers = [
            container(
                "server",
                "vllm/vllm-openai:v0.6.4",
                ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                ["--model", "/models/llama", "--port", "8000"],
                sa=sa,
                env=[
                    {"name": "HF_HOME", "value": "/models/.cache"},
                    {
                        "name": "HF_TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
                    },
                ],
                ports=[{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                readinessProbe=http_probe(),
                resources={
                    "limits": {"nvidia.com/gpu": "1", "memory": "32Gi"},
                    "requests": {"nvidia.com/gpu": "1", "memory": "32Gi", "cpu": "4"},
                },
                volumeMounts=[{"name": "models", "mountPath": "/models", "readOnly": True}],
            )
        ]
    spec = {
        "volumes": (
            volumes
            if volumes is not None
            else [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}]
        )
        + [sa_volume(sa)],
        "containers": containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if init:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {}}


def review(
    obj,
    ns="inference",
    uid="705ab4f5-6393-11e8-b7cc-42010a800002",
    kind="Pod",
    operation="CREATE",
    group="",
    resource="pods",
):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "requestResource": {"group": group, "version": "v1", "resource": resource},
            "namespace": ns,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "a3c1",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated",
                ],
            },
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


READY = [{"name": "llm-0c1f", "created": "2026-11-20T10:05:00Z"}]
cases = {}


def case(name, desc, rev, config=None, snapshots=()):
    cases[name] = {
        "case": {"description": desc, "config": config or {}, "snapshots": list(snapshots)},
        "review": rev,
    }


base = deployment_pod()
case(
    "checkpoint-native",
    "Deployment pod (generateName only, SA token volume, managedFields), auto mode, "
    "no snapshot: checkpoint mode, native sidecar",
    review(base),
)
case(
    "checkpoint-container-mode",
    "as checkpoint-native with --sidecar-mode=container",
    review(base),
    {"sidecar_mode": "container"},
)
case(
    "checkpoint-forced",
    "mode: checkpoint with a Ready snapshot present: still checkpoint mode",
    review(deployment_pod(annotations={"thaw.dev/mode": "checkpoint"})),
    snapshots=READY,
)
case(
    "checkpoint-vllm-sleep",
    "vLLM with sleep mode (thaw.dev/engine: vllm) and a 30-minute checkpoint window: the "
    "sidecar gets the probe, /sleep?level=1 and /wake_up on the probe's port, and the window",
    review(
        deployment_pod(
            annotations={"thaw.dev/engine": "vllm", "thaw.dev/checkpoint-window": "1800"}
        )
    ),
)
hook_worker = deployment_pod(
    annotations={"thaw.dev/warm": "hook"},
    containers=[
        container(
            "worker",
            "registry.example/llm-worker:1.4",
            ["python3", "-m", "llm_worker"],
            ["--model", "/models/llama"],
            resources={"limits": {"nvidia.com/gpu": "1"}},
            volumeMounts=[{"name": "models", "mountPath": "/models", "readOnly": True}],
        )
    ],
)
case(
    "checkpoint-hook",
    "a thaw-aware worker (sidecar.hooks writes ready-for-checkpoint) with no readinessProbe: "
    "thaw.dev/warm: hook, so the sidecar gets no probe, only the checkpoint window",
    review(hook_worker),
)
multi = deployment_pod(
    annotations={
        "thaw.dev/container": "worker",
        "thaw.dev/mode": "auto",
        "thaw.dev/engine": "sglang",
    },
    init=[
        container(
            "fetch-weights",
            "busybox:1.36",
            ["sh", "-c", "test -d /models/llama"],
            volumeMounts=[{"name": "models", "mountPath": "/models"}],
        )
    ],
    containers=[
        container("proxy", "envoyproxy/envoy:v1.31", ["envoy"], ["-c", "/etc/envoy/envoy.yaml"]),
        container(
            "worker",
            "lmsysorg/sglang:v0.3.6",
            ["python3", "-m", "sglang.launch_server"],
            ["--model-path", "/models/llama"],
            env=[{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}],
            envFrom=[{"configMapRef": {"name": "llm-tuning"}}],
            ports=[{"name": "api", "containerPort": 30000, "protocol": "TCP"}],
            readinessProbe=probe({"tcpSocket": {"port": "api"}}),
            resources={"limits": {"nvidia.com/gpu": "1"}},
            volumeMounts=[
                {"name": "models", "mountPath": "/models"},
                {"name": "shm", "mountPath": "/dev/shm"},
            ],
        ),
    ],
    volumes=[
        {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ],
)
case(
    "restore-native-multi",
    "two containers, target chosen by annotation, a user init container, Ready snapshot: "
    "restore mode, native sidecar then thaw-restore before the user's init; SGLang's "
    "memory release/resume on the port of its tcpSocket probe (named port 'api')",
    review(multi),
    snapshots=READY,
)
case(
    "restore-container-mode",
    "single container, Ready snapshot, --sidecar-mode=container and a custom store claim",
    review(base),
    {"sidecar_mode": "container", "store_claim": "shared-store"},
    snapshots=[*READY, {"name": "llm-old", "created": "2026-11-01T00:00:00Z"}],
)
case(
    "restore-host-path-store",
    "Ready snapshot, single-node store: the agent's host folder instead of the PVC",
    review(base),
    {"sidecar_mode": "container", "store_host_path": "/var/lib/thaw/snapshots"},
    snapshots=READY,
)
case("skip-no-opt-in", "no thaw.dev/enabled label", review(deployment_pod(labels={"app": "llm"})))
case(
    "skip-mode-off",
    "thaw.dev/mode: off",
    review(deployment_pod(annotations={"thaw.dev/mode": "off"})),
    snapshots=READY,
)
case(
    "skip-unknown-mode",
    "thaw.dev/mode: sometimes",
    review(deployment_pod(annotations={"thaw.dev/mode": "sometimes"})),
)
case(
    "skip-kube-system",
    "pod in kube-system",
    review(deployment_pod(ns="kube-system"), ns="kube-system"),
)
case(
    "skip-own-namespace",
    "pod in the webhook's own namespace",
    review(deployment_pod(ns="thaw-system"), ns="thaw-system"),
)
dep = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "llm", "namespace": "inference", "labels": {"thaw.dev/enabled": "true"}},
    "spec": {},
}
case(
    "skip-not-a-pod",
    "a Deployment sent to the pod webhook",
    review(dep, kind="Deployment", group="apps", resource="deployments"),
)
case("skip-not-create", "an UPDATE of a pod", review(base, operation="UPDATE"))
case(
    "skip-container-not-found",
    "thaw.dev/container names no container",
    review(deployment_pod(annotations={"thaw.dev/container": "missing"})),
)
nocmd = deployment_pod(
    containers=[container("server", "vllm/vllm-openai:v0.6.4", None, ["--model", "/models/llama"])]
)
case(
    "skip-no-command", "target container relies on the image ENTRYPOINT (args only)", review(nocmd)
)
clash = deployment_pod(volumes=[{"name": "thaw-control", "emptyDir": {}}])
case(
    "skip-name-conflict",
    "pod already has a volume called thaw-control without the injected annotation",
    review(clash),
)
elsewhere = deployment_pod()
elsewhere["spec"]["containers"][0]["volumeMounts"].append(
    {"name": "models", "mountPath": "/run/thaw"}
)
case(
    "skip-control-dir-conflict",
    "the worker mounts a volume at /run/thaw: the control folder under another spelling "
    "(/var/run is a symlink to /run)",
    review(elsewhere),
)
shared_pid = deployment_pod()
shared_pid["spec"]["shareProcessNamespace"] = True
case(
    "skip-shared-pid-namespace",
    "shareProcessNamespace: true: the worker is not alone in its PID namespace, which the "
    "agent needs to dump and restore it",
    review(shared_pid),
)
host_net = deployment_pod()
host_net["spec"]["hostNetwork"] = True
host_net["spec"]["containers"][0]["ports"][0]["hostPort"] = 8000
case(
    "skip-host-network",
    "hostNetwork: true: the sidecar's metrics port 9464 would be bound on the node",
    review(host_net),
)
exporter = deployment_pod()
exporter["spec"]["containers"].append(
    container(
        "otel-exporter",
        "otel/opentelemetry-collector:0.114.0",
        ["/otelcol"],
        ["--config", "/etc/otel/config.yaml"],
        ports=[{"name": "prometheus", "containerPort": 9464, "protocol": "TCP"}],
    )
)
case(
    "skip-port-conflict",
    "an OpenTelemetry exporter already serves Prometheus on 9464, the sidecar's port: the "
    "sidecar would die with EADDRINUSE",
    review(exporter),
)
case(
    "skip-no-ready-snapshot",
    "mode: restore and no Ready snapshot: left unchanged",
    review(deployment_pod(annotations={"thaw.dev/mode": "restore"})),
)
case(
    "skip-snapshots-not-synced",
    "auto mode while the Snapshot cache has never listed (API server unreachable since "
    "start): admitted as written rather than guessing 'no snapshot'",
    review(base),
    snapshots=READY,
)
cases["skip-snapshots-not-synced"]["case"]["synced"] = False
no_probe = deployment_pod()
del no_probe["spec"]["containers"][0]["readinessProbe"]
case(
    "skip-no-warm-signal",
    "no readinessProbe and no thaw.dev/warm: hook: nothing could tell the sidecar the engine is "
    "warm, so the pod is left as written (the warning says what to add)",
    review(no_probe),
)
exec_probe = deployment_pod()
exec_probe["spec"]["containers"][0]["readinessProbe"] = probe(
    {"exec": {"command": ["curl", "-sf", "localhost:8000/health"]}}
)
case(
    "skip-probe-unsupported",
    "an exec readinessProbe: the sidecar (another image) cannot run it",
    review(exec_probe),
)
unknown_port = deployment_pod()
unknown_port["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "metrics"
case(
    "skip-bad-probe",
    "the httpGet probe names a port the container does not declare",
    review(unknown_port),
)
case(
    "skip-bad-annotation",
    "thaw.dev/engine: tgi, an engine without known sleep/wake endpoints",
    review(deployment_pod(annotations={"thaw.dev/engine": "tgi"})),
)
bad = deployment_pod()
bad["spec"]["containers"][0]["command"] = "python3 -m vllm"
case("skip-malformed-pod", "command is a string, not a list", review(bad))
for name, body in cases.items():
    (OUT / f"{name}.review.json").write_text(json.dumps(body, indent=2) + "\n")

# Re-invocation: the checkpoint-native output, sent again.
sys.path[:0] = [str(OUT.parents[1]), str(OUT.parent / "webhook")]
from webhook_support import run_case  # noqa: E402

_, _, injected = run_case(cases["checkpoint-native"], pathlib.Path(tempfile.mkdtemp()) / "s")
again = copy.deepcopy(cases["checkpoint-native"])
again["case"]["description"] = (
    "re-invocation: the pod already carries thaw.dev/injected (the checkpoint-native output)"
)
again["review"]["request"]["object"] = injected
(OUT / "skip-already-injected.review.json").write_text(json.dumps(again, indent=2) + "\n")
print(f"wrote {len(cases) + 1} reviews")
