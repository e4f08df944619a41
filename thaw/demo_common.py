"""What both ``thaw demo`` flows share: the webhook on loopback and the pods it rewrites."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch

from thaw import contract, launch

NAMESPACE = "demo"
CONTAINER = "worker"


def review(pod: dict[str, Any], uid: str) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NAMESPACE,
                "operation": "CREATE",
                "object": pod,
            },
        }
    ).encode()


@contextlib.contextmanager
def webhook(work: Path, store: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    """A real ``thaw webhook serve`` on 127.0.0.1 with freshly generated certificates."""
    thaw = [sys.executable, "-m", "thaw.cli"]
    certs = work / "certs"
    subprocess.run(
        [*thaw, "certs", "generate", "--hosts", "127.0.0.1", "--out", str(certs)],
        check=True,
        capture_output=True,
    )
    port_file = work / "webhook.port"
    log = (work / "webhook.log").open("wb")
    serve = ["webhook", "serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    tls = ["--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key")]
    proc = subprocess.Popen(
        [*thaw, *serve, *tls, "--snapshots", str(store), "--sidecar-mode", "container"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"webhook did not start; see {work / 'webhook.log'}")
            time.sleep(0.05)
        yield int(port_file.read_text()), ssl.create_default_context(cafile=str(certs / "ca.crt"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        log.close()


def admit(port: int, ctx: ssl.SSLContext, pod: dict[str, Any], uid: str) -> dict[str, Any]:
    """POST one AdmissionReview; return the pod with the webhook's patch applied."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request(
            "POST",
            "/mutate?timeout=5s",
            body=review(pod, uid),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(conn.getresponse().read())["response"]
    finally:
        conn.close()
    if not answer.get("patch"):
        return pod
    patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(answer["patch"])))
    return patch.apply(pod)


def describe(pod: dict[str, Any]) -> str:
    ann = pod["metadata"].get("annotations", {})
    names = [c["name"] for c in pod["spec"].get("initContainers", [])]
    names += [c["name"] for c in pod["spec"]["containers"]]
    mode = ann.get(contract.ANNOTATION_INJECTED, "not injected")
    snap = ann.get(contract.ANNOTATION_SNAPSHOT)
    return f"mode={mode}" + (f" snapshot={snap}" if snap else "") + f" containers={names}"


def target_argv(pod: dict[str, Any]) -> list[str]:
    """The user's argv, recovered from the launcher the webhook put in front of it."""
    container = next(c for c in pod["spec"]["containers"] if c["name"] == CONTAINER)
    argv = launch.original_argv(container["command"])
    if argv is None:
        raise RuntimeError("the webhook did not wrap the worker's command")
    return argv


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def admit_restore(
    port: int, ctx: ssl.SSLContext, pod: dict[str, Any], uid: str
) -> tuple[dict[str, Any], str]:
    """A later replica through the webhook, which must pick restore mode: (pod, snapshot)."""
    admitted = admit(port, ctx, pod, uid)
    print(f"[webhook] {uid.replace('-', ' ')} -> {describe(admitted)}")
    snapshot = admitted["metadata"].get("annotations", {}).get(contract.ANNOTATION_SNAPSHOT, "")
    if not snapshot:
        raise RuntimeError(f"the webhook did not pick restore mode for {uid}")
    return admitted, snapshot
