"""Self-signed certificate mode against the real API server, as the chart runs it.

``thaw certs ensure`` (the chart's ``certs`` container) creates the TLS Secret,
rotates it and patches the webhook configuration's caBundle; a real webhook
process serves the Secret's certificate (written to files, as the kubelet
does) and the API server must keep calling it over TLS through every step:
first issue, serving-cert renewal, and CA rotation before the webhook has
reloaded (the old CA stays in the bundle for exactly that window).
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from kube_control_plane import free_port, stop_process, thaw_cli
from webhook_process import OWN_NAMESPACE, generate_certs, labeled_pod

from certs import lease
from thaw import contract

pytestmark = pytest.mark.apiserver

SECRET = "thaw-webhook-tls"
LEASE = "thaw-webhook-leader"


def _ensure(kubeconfig: Path, namespace: str, config_name: str, identity: str) -> str:
    result = subprocess.run(
        [
            *thaw_cli(),
            "certs",
            "ensure",
            f"--kubeconfig={kubeconfig}",
            f"--secret={namespace}/{SECRET}",
            f"--webhook-config={config_name}",
            "--hosts=127.0.0.1",
            "--leader-elect",
            f"--lease={LEASE}",
            f"--identity={identity}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def _secret(core, namespace: str):
    return core.read_namespaced_secret(SECRET, namespace)


def _data(secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _mount(secret, folder: Path) -> None:
    """What the kubelet does with the Secret volume: files, replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("tls.crt", "tls.key"):
        tmp = folder / f".{key}.tmp"
        tmp.write_bytes(_data(secret)[key])
        tmp.replace(folder / key)


def _served_cert(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
        ctx.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der).encode()


def _wait_served(port: int, cert_pem: bytes, timeout_s: float = 15) -> None:
    from cryptography import x509

    wanted = x509.load_pem_x509_certificate(cert_pem)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if x509.load_pem_x509_certificate(_served_cert(port)) == wanted:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the webhook never served the certificate from the Secret")


def _assert_admission_mutates(core, namespace: str) -> None:
    name = f"w-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(namespace, labeled_pod(name))
    pod = core.read_namespaced_pod(name, namespace)
    assert contract.ANNOTATION_INJECTED in (pod.metadata.annotations or {}), (
        "the API server did not get a mutation: it does not trust the served certificate"
    )


def _ca_bundle(admission, name: str) -> bytes:
    mwc = admission.read_mutating_webhook_configuration(name)
    return base64.b64decode(mwc.webhooks[0].client_config.ca_bundle or "")


def test_secret_issue_renewal_and_ca_rotation(control_plane, api_client, namespace, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )
    from kubernetes import client

    from webhook.configuration import mutating_webhook_configuration

    core = client.CoreV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    port = free_port()
    config_name = f"thaw-e2e-certs-{uuid.uuid4().hex[:6]}"
    admission.create_mutating_webhook_configuration(
        mutating_webhook_configuration(
            OWN_NAMESPACE, url=f"https://127.0.0.1:{port}", name=config_name
        )
    )
    webhook = None
    try:
        # 1. First issue: Secret created, caBundle patched.
        _ensure(control_plane.kubeconfig, namespace, config_name, identity="replica-a")
        secret = _secret(core, namespace)
        assert secret.type == "kubernetes.io/tls"
        data = _data(secret)
        assert _ca_bundle(admission, config_name) == data["ca-bundle.crt"]

        certs = tmp_path / "tls"
        _mount(secret, certs)
        webhook = subprocess.Popen(
            [
                *thaw_cli(),
                "webhook",
                "serve",
                f"--listen=127.0.0.1:{port}",
                f"--tls-cert={certs / 'tls.crt'}",
                f"--tls-key={certs / 'tls.key'}",
                f"--namespace={OWN_NAMESPACE}",
                "--sidecar-mode=container",
                "--cert-check-interval=0.3",
            ],
            stdout=open(tmp_path / "webhook.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_served(port, data["tls.crt"])
        _assert_admission_mutates(core, namespace)

        # 2. Nothing to do -> nothing written.
        version = secret.metadata.resource_version
        _ensure(control_plane.kubeconfig, namespace, config_name, identity="replica-a")
        assert _secret(core, namespace).metadata.resource_version == version

        # 3. Serving pair replaced by one from another CA: a non-leader replica leaves it
        #    alone, the leader renews it from the Secret's own CA.
        foreign_pair = generate_certs(tmp_path / "foreign")
        broken = _secret(core, namespace)
        for key in ("tls.crt", "tls.key"):
            broken.data[key] = base64.b64encode((foreign_pair / key).read_bytes()).decode()
        core.replace_namespaced_secret(SECRET, namespace, broken)
        broken_version = _secret(core, namespace).metadata.resource_version
        # replica-a leads (as its long-running certs container would); one-shot runs
        # release the Lease on exit, so take it here with the same code.
        assert lease.try_acquire(api_client, namespace, LEASE, "replica-a")
        _ensure(control_plane.kubeconfig, namespace, config_name, identity="replica-b")
        assert _secret(core, namespace).metadata.resource_version == broken_version
        _ensure(control_plane.kubeconfig, namespace, config_name, identity="replica-a")
        renewed = _secret(core, namespace)
        new_data = _data(renewed)
        assert new_data["ca.crt"] == data["ca.crt"], "renewal must keep the CA"
        assert new_data["tls.crt"] != data["tls.crt"]
        _mount(renewed, certs)
        _wait_served(port, new_data["tls.crt"])
        _assert_admission_mutates(core, namespace)

        # 4. CA rotation (its key no longer matches): new CA + old CA in the bundle, so
        #    the still-mounted old serving cert keeps working until the files refresh.
        foreign = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        tampered = _secret(core, namespace)
        tampered.data["ca.key"] = base64.b64encode(foreign).decode()
        core.replace_namespaced_secret(SECRET, namespace, tampered)
        _ensure(control_plane.kubeconfig, namespace, config_name, identity="replica-a")
        rotated = _data(_secret(core, namespace))
        assert rotated["ca.crt"] != new_data["ca.crt"]
        bundle = x509.load_pem_x509_certificates(_ca_bundle(admission, config_name))
        assert x509.load_pem_x509_certificate(rotated["ca.crt"]) in bundle
        assert x509.load_pem_x509_certificate(new_data["ca.crt"]) in bundle
        _assert_admission_mutates(core, namespace)  # old serving cert, old CA still trusted
        _mount(_secret(core, namespace), certs)
        _wait_served(port, rotated["tls.crt"])
        _assert_admission_mutates(core, namespace)  # new serving cert, new CA
    finally:
        if webhook is not None:
            stop_process(webhook)
        admission.delete_mutating_webhook_configuration(config_name)
