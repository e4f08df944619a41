"""An unmodified `transformers serve` Deployment on the real node, through the chart.

The image holds no thaw code; the Deployment carries the opt-in label, a
readinessProbe and nothing else of thaw's. The first pod cold-starts, its own
probe tells the sidecar it is warm, the agent checkpoints it while a client
keeps sending chat completions over a kept-alive connection (each one must
succeed: the dump is a pause, not an outage), the pod becomes Ready. Scaled to
3, the new pods are restored and give the same greedy answer byte for byte.
The worker is a tree of processes (the HTTP server, the model's process it
spawns, multiprocessing's resource tracker), the shape of vLLM's V1 engine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import cluster
import engine_client as ec
import pytest
import thaw_release as tr
from node_support import record

import images
from thaw import contract

pytestmark = pytest.mark.node

PORT = 8000
# A small paged KV cache: on the CPU the engine otherwise sizes it from the host's memory.
ENGINE_ARGS = ("--continuous-batching", "--cb-num-blocks", "64", "--cb-block-size", "32")


def engine_deployment(name: str, image: str) -> dict[str, Any]:
    """What a user writes: the stock image, a probe, the opt-in label. Nothing else."""
    labels = {"app": name}
    argv = ["transformers", "serve", images.MODEL_PATH, *ENGINE_ARGS]
    argv += ["--host", "0.0.0.0", "--port", str(PORT)]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": tr.NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": {**labels, contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE}
                },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "engine",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": argv,
                            "ports": [{"name": "http", "containerPort": PORT}],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 1,
                                "timeoutSeconds": 5,
                            },
                        }
                    ],
                },
            },
        },
    }


def pod_story(core: Any, name: str) -> str:
    """Events, container states and the engine's log: what a person would look at."""
    pod = core.read_namespaced_pod(name, tr.NS)
    states = [(s.name, s.ready, s.restart_count, s.state) for s in pod.status.container_statuses]
    try:
        log = core.read_namespaced_pod_log(name, tr.NS, container="engine", tail_lines=40)
    except Exception as e:  # the story is for a failure message: never hide the failure
        log = f"(no log: {e})"
    return f"events: {tr.pod_events(core, name)}\nstates: {states}\nengine log:\n{log}"


def pod_ip(core: Any, name: str) -> str:
    def ip() -> str | None:
        return core.read_namespaced_pod(name, tr.NS).status.pod_ip  # type: ignore[no-any-return]

    return tr.wait(f"an IP for {name}", ip, 120)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def engine(node: cluster.Node, kube: Any, release: None) -> Iterator[dict[str, Any]]:
    from kubernetes import client

    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    name = f"llm-{uuid.uuid4().hex[:6]}"
    yield {"name": name, "apps": apps, "core": core, "custom": client.CustomObjectsApi(kube)}
    apps.delete_namespaced_deployment(name, tr.NS)


def test_unmodified_engine_checkpointed_under_load_then_restored(
    node: cluster.Node, engine: dict[str, Any]
) -> None:
    apps, core, custom, name = engine["apps"], engine["core"], engine["custom"], engine["name"]
    body = ec.chat_body(images.MODEL_PATH)
    t0 = time.monotonic()
    apps.create_namespaced_deployment(
        tr.NS, engine_deployment(name, node.images["transformers-serve"]["ref"])
    )
    first = tr.wait("the first pod", lambda: tr.pods_of(core, name), 60)[0].metadata.name
    pod = core.read_namespaced_pod(first, tr.NS)
    assert pod.metadata.annotations[contract.ANNOTATION_INJECTED] == "checkpoint"
    key = pod.metadata.annotations[contract.ANNOTATION_SNAPSHOT_KEY]
    ip = pod_ip(core, first)

    # The client starts before the engine answers and keeps going through the dump.
    try:
        cold_answer = ec.first_completion(node.netns_path, ip, PORT, body, 300)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{pod_story(core, first)}") from e
    record("llm_cold_pod_create_to_first_completion_s", time.monotonic() - t0)
    load = ec.LoadLoop(node.netns_path, ip, PORT, body).start()

    def ready_snapshot() -> dict[str, Any] | None:
        mine = [s for s in tr.snapshots(custom) if s["spec"].get(contract.SPEC_KEY) == key]
        assert contract.Phase.FAILED.value not in [tr.phase(s) for s in mine], mine
        ready = [s for s in mine if tr.phase(s) == contract.Phase.READY.value]
        return ready[0] if ready else None

    try:
        snap = tr.wait("a Ready Snapshot", ready_snapshot, 300, lambda: tr.pod_events(core, first))
        record("llm_deploy_to_snapshot_ready_s", time.monotonic() - t0)
        clock = tr.ReadyClock(core, name, t0)
        tr.wait("the checkpointed pod Ready", lambda: clock.poll({first}), 120)
        record("llm_cold_pod_create_to_ready_s", clock.ready_at[first])
        time.sleep(2)  # a few more completions after the dump, on the same connection
    finally:
        result = load.stop()
    assert not result.failures, result.failures
    assert result.answers and set(result.answers) == {cold_answer}
    record("llm_completions_during_checkpoint", len(result.answers))
    record("llm_longest_completion_during_checkpoint_s", result.longest_s)

    t1 = time.monotonic()
    apps.patch_namespaced_deployment_scale(name, tr.NS, {"spec": {"replicas": 3}})
    new = tr.wait(
        "2 new pods",
        lambda: (
            [p for p in tr.pods_of(core, name) if p.metadata.name != first][:2]
            if len(tr.pods_of(core, name)) >= 3
            else None
        ),
        60,
    )
    answers, slowest = {}, 0.0
    for p in new:
        answers[p.metadata.name] = ec.first_completion(
            node.netns_path, pod_ip(core, p.metadata.name), PORT, body, 300
        )
        slowest = max(slowest, time.monotonic() - t1)
    record("llm_restored_pod_create_to_first_completion_s", slowest)
    for p in new:
        events = tr.pod_events(core, p.metadata.name)
        assert tr.RESTORED in [r for r, _ in events], events
        assert tr.RESTORE_FAILED not in [r for r, _ in events], events
        fresh = core.read_namespaced_pod(p.metadata.name, tr.NS)
        assert fresh.metadata.annotations[contract.ANNOTATION_SNAPSHOT] == snap["metadata"]["name"]
    assert set(answers.values()) == {cold_answer}, (answers, cold_answer)

    listing = tr.kubectl(node, "get", contract.CRD_PLURAL, "-n", tr.NS)
    assert snap["metadata"]["name"] in listing and "Ready" in listing
