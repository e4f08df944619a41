"""Certificates and kubeconfigs for the throwaway single-node cluster.

One CA signs everything: the API server's serving cert, a client cert per
component (the CN/O pair is the identity RBAC and the Node authorizer see),
and the kubelet's serving cert. Keys are ECDSA P-256, which every 1.20
component accepts, including for service-account token signing.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = dt.timedelta(days=2)  # the cluster lives for one test session


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


class ClusterPKI:
    """Writes ``<name>.crt``/``<name>.key`` pairs into one folder."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self._nb, self._na = now - dt.timedelta(minutes=5), now + LIFETIME
        self._ca_key = _key()
        self._ca_name = _name("thaw-node-ca")
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(self._ca_name)
            .issuer_name(self._ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._nb)
            .not_valid_after(self._na)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self._write("ca", self._ca, self._ca_key)
        sa = _key()
        (self.dir / "sa.key").write_bytes(_pem_key(sa))
        (self.dir / "sa.pub").write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def ca_pem(self) -> bytes:
        return self._ca.public_bytes(serialization.Encoding.PEM)

    def path(self, name: str, ext: str) -> Path:
        return self.dir / f"{name}.{ext}"

    def _write(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.path(name, "crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.path(name, "key").write_bytes(_pem_key(key))
        self.path(name, "key").chmod(0o600)

    def issue(
        self,
        name: str,
        cn: str,
        org: str | None = None,
        server_hosts: Sequence[str] = (),
        client: bool = False,
    ) -> None:
        key = _key()
        usages = []
        if server_hosts:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(self._ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._nb)
            .not_valid_after(self._na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            # Strict verifiers (Python >= 3.13's default) insist on both key identifiers.
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if server_hosts:
            sans: list[x509.GeneralName] = []
            for host in server_hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        self._write(name, builder.sign(self._ca_key, hashes.SHA256()), key)

    def kubeconfig(self, name: str, server: str, out: Path) -> Path:
        """A kubeconfig for the client cert ``name`` with everything embedded."""

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "thaw-node",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [
                {
                    "name": name,
                    "user": {
                        "client-certificate-data": b64(self.path(name, "crt")),
                        "client-key-data": b64(self.path(name, "key")),
                    },
                }
            ],
            "contexts": [{"name": "thaw-node", "context": {"cluster": "thaw-node", "user": name}}],
            "current-context": "thaw-node",
        }
        out.write_text(yaml.safe_dump(cfg))
        out.chmod(0o600)
        return out
