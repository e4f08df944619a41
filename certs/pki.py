"""Certificates for the admission webhook: a private CA and a serving cert it signs.

The API server verifies the webhook against ``caBundle`` and the Service DNS
name (or IP), so names go in subjectAltName - never only in the CN, which
verifiers ignore. Keys are ECDSA P-256: small, and fast to handshake on
every admission call.

Host names are checked before anything is made: IP literals, or RFC 1123 DNS
names (internationalised ones converted to their IDNA A-label form), with a
wildcard only as a whole leftmost label - a SAN the API server's verifier
would never match is an error, not a certificate that silently fails later.

Rotation rule (``needs_rotation``): replace a certificate once less than a
third of its lifetime is left, so a weekly or daily reconcile always renews
well before expiry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence

import idna
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = dt.timedelta(days=3650)
SERVING_LIFETIME = dt.timedelta(days=365)
MAX_SERVING_DAYS = CA_LIFETIME.days  # a serving cert never outlives its CA anyway
MAX_DNS_NAME = 253
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ROTATE_WHEN_LEFT = 1 / 3
CLOCK_SKEW = dt.timedelta(minutes=5)  # backdate notBefore for peers with slow clocks
CA_COMMON_NAME = "thaw-webhook-ca"


class CertError(ValueError):
    """Unusable certificate input: bad host names, unparseable PEM, mismatched pair."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """PEM texts of a CA and the serving pair it signed."""

    ca_cert: bytes
    ca_key: bytes
    tls_cert: bytes
    tls_key: bytes


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def split_hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """IP literals become IP SANs, everything else DNS SANs (order kept, no duplicates)."""
    names: list[x509.GeneralName] = []
    for raw in hosts:
        host = raw.strip()
        if not host:
            continue
        try:
            if "%" in host:
                raise ValueError("zoned address")
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            name = x509.DNSName(dns_name(host))
        if name not in names:
            names.append(name)
    if not names:
        raise CertError("at least one host name or IP address is needed")
    return names


def dns_name(host: str) -> str:
    """``host`` as a SAN: lower-case A-labels, RFC 1123, ``*`` only as the leftmost label."""
    bad = f"not a valid host name or IP address: {host!r}"
    labels = host.lower().split(".")
    wildcard = labels[0] == "*"
    rest = labels[1:] if wildcard else labels
    if not rest or (wildcard and len(rest) < 2):
        raise CertError(f"{bad} (a wildcard needs at least two labels after it)")
    if not ".".join(rest).isascii():
        try:
            rest = idna.encode(".".join(rest), uts46=True).decode("ascii").split(".")
        except (idna.IDNAError, UnicodeError) as e:
            raise CertError(f"{bad} (IDNA: {e})") from None
    name = ".".join(["*", *rest] if wildcard else rest)
    if len(name) > MAX_DNS_NAME:
        raise CertError(f"{bad} (longer than {MAX_DNS_NAME} characters)")
    for label in rest:
        if not _LABEL.match(label):
            raise CertError(
                f"{bad} (label {label!r}: letters, digits and inner hyphens, 1-63 characters)"
            )
    if rest[-1].isdigit():
        raise CertError(f"{bad} (the last label is all digits)")
    return name


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs (ECDSA keys encipher nothing)."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    now: dt.datetime | None = None, lifetime: dt.timedelta = CA_LIFETIME
) -> tuple[bytes, bytes]:
    """A self-signed CA that may sign only end-entity certs: (cert PEM, key PEM)."""
    now = now or now_utc()
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(key)


def make_serving(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    hosts: Sequence[str],
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = SERVING_LIFETIME,
) -> tuple[bytes, bytes]:
    """A serverAuth cert for ``hosts`` signed by the CA: (cert PEM, key PEM).

    Never outlives its CA.
    """
    now = now or now_utc()
    if lifetime <= dt.timedelta(0):
        raise CertError(f"certificate lifetime must be positive, not {lifetime}")
    ca_cert, ca_key = load_cert(ca_cert_pem), load_key(ca_key_pem)
    sans = split_hosts(hosts)
    key = _key()
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    first = sans[0].value
    cn = str(first)[:64]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(key)


def make_bundle(hosts: Sequence[str], now: dt.datetime | None = None) -> Bundle:
    ca_cert, ca_key = make_ca(now)
    tls_cert, tls_key = make_serving(ca_cert, ca_key, hosts, now)
    return Bundle(ca_cert, ca_key, tls_cert, tls_key)


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise CertError(f"not a PEM certificate: {e}") from None


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("expected an EC private key")
    return key


def needs_rotation(
    cert_pem: bytes, now: dt.datetime | None = None, left: float = ROTATE_WHEN_LEFT
) -> bool:
    """True once less than ``left`` of the certificate's lifetime remains (or it is unreadable)."""
    now = now or now_utc()
    try:
        cert = load_cert(cert_pem)
    except CertError:
        return True
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return end - now < (end - start) * left


def san_names(cert_pem: bytes) -> list[str]:
    cert = load_cert(cert_pem)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in ext.value]


def covers_hosts(cert_pem: bytes, hosts: Sequence[str]) -> bool:
    wanted = {str(n.value) for n in split_hosts(hosts)}
    return wanted <= set(san_names(cert_pem))


def signed_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    try:
        load_cert(cert_pem).verify_directly_issued_by(load_cert(ca_cert_pem))
    except (CertError, ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    try:
        return load_cert(cert_pem).public_key() == load_key(key_pem).public_key()
    except CertError:
        return False
