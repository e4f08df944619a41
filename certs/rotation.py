"""What the serving-cert Secret should hold next: a pure plan from what it holds now.

Rules, in order:

1. No usable CA, or the CA has < 1/3 of its life left -> new CA and new
   serving cert. The old CA stays in ``ca-bundle.crt`` while it is valid, so
   the API server trusts both the serving cert still mounted in running
   webhook pods (old CA) and the new one, until the kubelet refreshes them.
2. Serving cert missing, unreadable, not signed by the CA, not matching its
   key, missing one of the wanted hosts, or < 1/3 of its life left -> new
   serving cert from the same CA.
3. Otherwise nothing changes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

from cryptography import x509

from certs import pki

SECRET_CA_CERT = "ca.crt"
SECRET_CA_KEY = "ca.key"
SECRET_TLS_CERT = "tls.crt"
SECRET_TLS_KEY = "tls.key"
SECRET_CA_BUNDLE = "ca-bundle.crt"  # what goes into the webhook's caBundle


@dataclasses.dataclass(frozen=True)
class Plan:
    data: dict[str, bytes]  # the Secret's next data
    changed: bool
    why: str

    @property
    def ca_bundle(self) -> bytes:
        return self.data[SECRET_CA_BUNDLE]


def _valid_ca(data: Mapping[str, bytes], now: dt.datetime) -> bool:
    cert, key = data.get(SECRET_CA_CERT), data.get(SECRET_CA_KEY)
    if not cert or not key or not pki.key_matches(cert, key):
        return False
    return not pki.needs_rotation(cert, now)


def _serving_problem(data: Mapping[str, bytes], hosts: Sequence[str], now: dt.datetime) -> str:
    cert, key, ca = data.get(SECRET_TLS_CERT), data.get(SECRET_TLS_KEY), data[SECRET_CA_CERT]
    if not cert or not key:
        return "no serving certificate"
    if not pki.key_matches(cert, key):
        return "serving certificate does not match its key"
    if not pki.signed_by(cert, ca):
        return "serving certificate not signed by the CA"
    if not pki.covers_hosts(cert, hosts):
        return "serving certificate does not cover every host"
    if pki.needs_rotation(cert, now):
        return "serving certificate near expiry"
    return ""


def still_valid_cas(bundle: bytes, now: dt.datetime) -> list[bytes]:
    """PEM blocks of a CA bundle that have not expired (unparseable ones dropped)."""
    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return []
    from cryptography.hazmat.primitives.serialization import Encoding

    return [c.public_bytes(Encoding.PEM) for c in certs if c.not_valid_after_utc > now]


def plan(
    current: Mapping[str, bytes] | None, hosts: Sequence[str], now: dt.datetime | None = None
) -> Plan:
    now = now or pki.now_utc()
    data = dict(current or {})
    pki.split_hosts(hosts)  # reject bad names before anything else
    if not _valid_ca(data, now):
        why = "new CA" if not data.get(SECRET_CA_CERT) else "CA rotated"
        old = still_valid_cas(data.get(SECRET_CA_CERT, b""), now)
        ca_cert, ca_key = pki.make_ca(now)
        tls_cert, tls_key = pki.make_serving(ca_cert, ca_key, hosts, now)
        bundle = b"".join([ca_cert, *old[:1]])
        return Plan(_data(ca_cert, ca_key, tls_cert, tls_key, bundle), True, why)
    problem = _serving_problem(data, hosts, now)
    ca_cert, ca_key = data[SECRET_CA_CERT], data[SECRET_CA_KEY]
    # Trust the current CA plus at most one previous one that is still valid.
    previous = [c for c in still_valid_cas(data.get(SECRET_CA_BUNDLE, b""), now) if c != ca_cert]
    bundle = b"".join([ca_cert, *previous[:1]])
    if problem:
        tls_cert, tls_key = pki.make_serving(ca_cert, ca_key, hosts, now)
        return Plan(_data(ca_cert, ca_key, tls_cert, tls_key, bundle), True, problem)
    changed = bundle != data.get(SECRET_CA_BUNDLE)
    next_data = _data(ca_cert, ca_key, data[SECRET_TLS_CERT], data[SECRET_TLS_KEY], bundle)
    return Plan(next_data, changed, "expired CA dropped from bundle" if changed else "up to date")


def _data(ca_cert: bytes, ca_key: bytes, tls_cert: bytes, tls_key: bytes, bundle: bytes):
    return {
        SECRET_CA_CERT: ca_cert,
        SECRET_CA_KEY: ca_key,
        SECRET_TLS_CERT: tls_cert,
        SECRET_TLS_KEY: tls_key,
        SECRET_CA_BUNDLE: bundle,
    }


def service_hosts(service: str, namespace: str) -> list[str]:
    """DNS names the API server may use for ``service`` in ``namespace``."""
    base = f"{service}.{namespace}"
    return [service, base, f"{base}.svc", f"{base}.svc.cluster.local"]
