"""A real ``thaw webhook serve`` process on loopback, registered with the API server.

The API server calls it through ``clientConfig.url`` (https://127.0.0.1:PORT/mutate)
and trusts it through the caBundle of a CA made by ``thaw certs generate``; the
webhook configuration object comes from ``webhook.configuration``, the one
place that builds it.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

from kube_control_plane import stop_process, thaw_cli

OWN_NAMESPACE = "thaw-system"


def generate_certs(out: Path) -> Path:
    """``thaw certs generate --hosts 127.0.0.1``: ca.crt, tls.crt, tls.key in ``out``."""
    result = subprocess.run(
        [*thaw_cli(), "certs", "generate", "--hosts", "127.0.0.1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"thaw certs generate failed:\n{result.stderr}"
    for name in ("ca.crt", "tls.crt", "tls.key"):
        assert (out / name).is_file(), f"thaw certs generate wrote no {name}"
    return out


class WebhookProcess:
    """One webhook server child process plus its MutatingWebhookConfiguration."""

    def __init__(self, work: Path, kubeconfig: Path | None, *, sidecar_mode: str = "container"):
        self.work = work
        self.kubeconfig = kubeconfig
        self.sidecar_mode = sidecar_mode
        self.certs = work / "certs"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.configuration_name = f"thaw-e2e-{uuid.uuid4().hex[:8]}"

    def start(self, timeout_s: float = 30) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if not (self.certs / "tls.crt").exists():
            generate_certs(self.certs)
        port_file = self.work / "port"
        port_file.unlink(missing_ok=True)
        argv = [
            *thaw_cli(),
            "webhook",
            "serve",
            "--listen=127.0.0.1:0",
            f"--port-file={port_file}",
            f"--tls-cert={self.certs / 'tls.crt'}",
            f"--tls-key={self.certs / 'tls.key'}",
            f"--sidecar-mode={self.sidecar_mode}",
            f"--namespace={OWN_NAMESPACE}",
        ]
        if self.kubeconfig:
            argv.append(f"--kubeconfig={self.kubeconfig}")
        log = open(self.work / "webhook.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"webhook exited {self.proc.returncode}:\n{self.log()}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit() and self._ready(int(text)):
                self.port = int(text)
                return
            time.sleep(0.1)
        raise AssertionError(f"webhook not ready after {timeout_s}s:\n{self.log()}")

    def _ready(self, port: int) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/readyz", timeout=2, context=ctx
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / "webhook.log").read_text(errors="replace")[-4000:]
        return ""

    def configuration(self) -> dict:
        from webhook.configuration import mutating_webhook_configuration

        return mutating_webhook_configuration(
            OWN_NAMESPACE,
            ca_bundle=(self.certs / "ca.crt").read_bytes(),
            url=f"https://127.0.0.1:{self.port}",
            name=self.configuration_name,
        )

    def register(self, api_client) -> None:
        from kubernetes import client

        client.AdmissionregistrationV1Api(api_client).create_mutating_webhook_configuration(
            self.configuration()
        )
        # The API server picks up webhook configurations from an informer: wait until
        # it really calls us, by probing with a server-side dry-run pod.
        wait_until_webhook_active(api_client)

    def unregister(self, api_client) -> None:
        from kubernetes import client

        with contextlib.suppress(client.ApiException):
            client.AdmissionregistrationV1Api(api_client).delete_mutating_webhook_configuration(
                self.configuration_name
            )


def labeled_pod(name: str, *, image: str = "registry.invalid/worker:1", labels=None) -> dict:
    """A minimal opted-in pod; the image is never pulled (no kubelet runs)."""
    from thaw import contract

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE, **(labels or {})},
        },
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": image,
                    "command": ["python3", "-m", "worker"],
                    "readinessProbe": {"tcpSocket": {"port": 8000}},
                }
            ]
        },
    }


def wait_until_webhook_active(api_client, namespace: str = "default", timeout_s: float = 20):
    from kubernetes import client

    from thaw import contract

    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pod = core.create_namespaced_pod(
            namespace, labeled_pod(f"probe-{uuid.uuid4().hex[:6]}"), dry_run="All"
        )
        if contract.ANNOTATION_INJECTED in (pod.metadata.annotations or {}):
            return
        time.sleep(0.2)
    raise AssertionError("the API server never called the registered webhook")
