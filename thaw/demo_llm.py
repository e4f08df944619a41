"""``thaw demo`` with a real engine: an unmodified ``transformers serve`` and a real model.

The Deployment is what a user writes: the engine's command, a readinessProbe on
``/health``, the opt-in label, nothing else of thaw's. Played on this machine:

1. the real webhook (TLS on loopback) rewrites replica 1 for checkpoint mode;
2. replica 1 runs as a namespace container with its own IP; the injected
   sidecar runs in the pod's network namespace with the env the webhook gave
   it, runs the worker's own probe, and announces the warm engine;
3. the local agent dumps the engine's whole process tree (HTTP server, model
   process) with CRIU while it keeps serving;
4. the webhook rewrites replica 2 for restore mode; the agent restores the tree
   into a container with another IP, the page cache dropped first;
5. a table compares pod start -> first chat completion, cold and restored, and
   checks both replicas give the same greedy answer byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import criu
from agent.local import LocalPod, start_agent, start_checkpoint_pod, start_restore_pod
from agent.store import Store
from sidecar.restore_init import run_restore_init
from thaw import contract, engine_model
from thaw.demo_common import (
    CONTAINER,
    NAMESPACE,
    admit,
    admit_restore,
    describe,
    drop_page_cache,
    target_argv,
)

PORT = 8000
PROMPT = "Name the capital of France in one word."
# A small paged KV cache: on the CPU the engine otherwise sizes it from the host's memory.
ENGINE_ARGS = ("--continuous-batching", "--cb-num-blocks", "64", "--cb-block-size", "32")


def engine_pod(model: Path) -> dict[str, Any]:
    """A replica of the user's Deployment, as the API server hands it to the webhook."""
    transformers = str(Path(sys.executable).parent / "transformers")
    argv = [transformers, "serve", str(model), *ENGINE_ARGS, "--host", "0.0.0.0"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "llm-7d9f8b-",
            "namespace": NAMESPACE,
            "labels": {"app": "llm", contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE},
        },
        "spec": {
            "containers": [
                {
                    "name": CONTAINER,
                    "image": "transformers-serve:demo",
                    "command": argv,
                    "args": ["--port", str(PORT)],
                    "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
                    "ports": [{"name": "http", "containerPort": PORT}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                }
            ]
        },
    }


def container_env(pod: dict[str, Any], name: str, pod_ip: str, control: Path) -> dict[str, str]:
    """The env the kubelet would give container ``name``: values, downward API filled in."""
    spec = pod["spec"]
    container = next(c for c in [*spec.get("initContainers", ()), *spec["containers"]]
                     if c["name"] == name)  # fmt: skip
    fields = {"metadata.name": name, "metadata.namespace": NAMESPACE, "status.podIP": pod_ip}
    env = {}
    for item in container.get("env", ()):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = fields.get(item["valueFrom"]["fieldRef"]["fieldPath"], "")
    env[contract.ENV_CONTROL_DIR] = str(control)  # the pod's control folder, as the host sees it
    return env


@contextlib.contextmanager
def sidecar(pod: dict[str, Any], local: LocalPod, work: Path) -> Iterator[None]:
    """The injected ``thaw-sidecar``, run in the pod's network namespace with its env."""
    assert local.box.net is not None
    env = container_env(pod, contract.SIDECAR_CONTAINER, local.box.net.ip, local.control)
    log = (work / f"{local.name}-sidecar.log").open("wb")
    argv = ["nsenter", f"--net=/proc/{local.box.pid}/ns/net", "--"]
    argv += [sys.executable, "-m", "thaw.cli", "sidecar", "run"]
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def ask(host: str, timeout: float) -> str:
    """One greedy chat completion; retried while the engine is not answering yet."""
    body = json.dumps(
        {
            "model": str(engine_model.model_dir()),
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 24,
            "temperature": 0,
        }
    )
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(host, PORT, timeout=120)
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status == 200:
                return str(json.loads(data)["choices"][0]["message"]["content"])
            error = f"HTTP {resp.status}"
        except OSError as e:
            error = str(e)
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no completion from {host}:{PORT} in {timeout:.0f}s ({error})")
        time.sleep(0.1)


def run_llm(args: argparse.Namespace, work: Path, port: int, ctx: Any) -> dict[str, Any]:
    """Checkpoint replica 1 of the engine Deployment, restore replica 2; the figures."""
    criu.require(check_kernel=True)
    model = engine_model.ensure()
    pod = engine_pod(model)
    first = admit(port, ctx, pod, "replica-1")
    print(f"[webhook] replica 1 -> {describe(first)}")
    key = first["metadata"]["annotations"][contract.ANNOTATION_SNAPSHOT_KEY]
    root = work / "local"
    agent = start_agent(root, root / "store")
    pods: list[LocalPod] = []
    try:
        t0 = time.monotonic()
        env = {"HF_HUB_OFFLINE": "1"}
        src = start_checkpoint_pod(
            root, "replica-1", target_argv(first), key=key, image="demo", namespace=NAMESPACE,
            env=env, network=True,
        )  # fmt: skip
        pods.append(src)
        assert src.box.net is not None
        with sidecar(first, src, work):
            src.wait_signal(contract.Signal.READY_FOR_CHECKPOINT, 600)
            warm_s = time.monotonic() - t0
            print(f"[sidecar] replica 1's probe passed after {warm_s:.2f} s: checkpoint it")
            done = json.loads(src.wait_signal(contract.Signal.CHECKPOINT_COMPLETE, 600))
            ckpt_s = time.monotonic() - t0 - warm_s
            if not done.get("ok"):
                raise RuntimeError(f"checkpoint failed: {done}")
            t1 = time.monotonic()
            cold_answer = ask(src.box.net.ip, 120)
            cold_s = warm_s + time.monotonic() - t1  # start to warm, then its first answer
        manifest = Store(root / "store").manifest(done["snapshot"])
        print(f"[agent] snapshot {done['snapshot']} Ready: {manifest.total_bytes / 1e6:.0f} MB")
        print(f"[client] replica 1 answers {cold_answer!r}")

        second, snapshot = admit_restore(port, ctx, pod, "replica-2")
        cache_dropped = drop_page_cache()
        t0 = time.monotonic()
        # The pod is on the node (the agent sees it and beats) before its thaw-restore
        # init step runs: node check, agent heartbeat, prefetch, restore-requested.
        dst = start_restore_pod(
            root, "replica-2", target_argv(second), key=key, snapshot=snapshot, image="demo",
            namespace=NAMESPACE, env=env, request=False, network=True,
        )  # fmt: skip
        pods.append(dst)
        assert dst.box.net is not None
        init = run_restore_init(root / "store", snapshot, dst.control)
        print(f"[thaw-restore] {init.signal.value}")
        dst.wait_signal(
            contract.Signal.RESTORE_COMPLETE, 600, unless=contract.Signal.RESTORE_FAILED
        )
        restored_answer = ask(dst.box.net.ip, 120)
        restore_s = time.monotonic() - t0
        print(f"[client] replica 2 ({dst.box.net.ip}) answers {restored_answer!r}")
        cache = "" if cache_dropped else ", page cache warm"
        return {
            "rows": [
                ("cold start (pod start to first completion)", f"{cold_s:.2f} s"),
                ("checkpoint (agent, engine paused)", f"{ckpt_s:.2f} s"),
                (f"restore (to first completion{cache})", f"{restore_s:.2f} s"),
                ("speed-up", f"{cold_s / restore_s:.1f}x"),
                ("snapshot size", f"{manifest.total_bytes / 1e6:.0f} MB"),
                ("same answer, byte for byte", "yes" if restored_answer == cold_answer else "NO"),
            ],
            "ok": restored_answer == cold_answer,
        }
    finally:
        for p in pods:
            p.stop()
        agent.stop(wait=True)
