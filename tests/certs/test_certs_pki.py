"""Generated certificates: SAN types, CA constraints, serverAuth, and a real TLS handshake."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat

import pytest
from certs_support import serve_once
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import pki
from thaw.cli import main

HOSTS = ["127.0.0.1", "::1", "thaw-webhook.thaw-system.svc", "localhost"]


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_cli_generate_writes_the_three_files(tmp_path, capsys):
    out = tmp_path / "tls"
    assert main(["certs", "generate", "--hosts", ",".join(HOSTS), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"ca.crt", "tls.crt", "tls.key"}
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600
    serving = cert((out / "tls.crt").read_bytes())
    san = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["thaw-webhook.thaw-system.svc", "localhost"]
    assert pki.signed_by((out / "tls.crt").read_bytes(), (out / "ca.crt").read_bytes())


def test_ca_and_serving_extensions():
    b = pki.make_bundle(HOSTS)
    ca, serving = cert(b.ca_cert), cert(b.tls_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert not serving.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert serving.not_valid_after_utc <= ca.not_valid_after_utc
    assert pki.key_matches(b.tls_cert, b.tls_key) and not pki.key_matches(b.tls_cert, b.ca_key)


@pytest.mark.parametrize("bad", ["", " , ", "http://x", "a b", "user@host"])
def test_bad_hosts_are_rejected(bad, tmp_path, capsys):
    with pytest.raises(pki.CertError):
        pki.split_hosts(bad.split(","))
    assert main(["certs", "generate", "--hosts", bad, "--out", str(tmp_path)]) == 2
    assert "thaw:" in capsys.readouterr().err


def test_rotation_threshold_is_a_third_of_the_lifetime():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ca_cert, ca_key = pki.make_ca(now)
    tls, _ = pki.make_serving(ca_cert, ca_key, HOSTS, now, lifetime=dt.timedelta(days=90))
    start = now - pki.CLOCK_SKEW
    total = dt.timedelta(days=90) + pki.CLOCK_SKEW
    assert not pki.needs_rotation(tls, now)
    assert not pki.needs_rotation(tls, start + total * 0.6)
    assert pki.needs_rotation(tls, start + total * 0.7)
    assert pki.needs_rotation(b"not a cert", now)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_real_handshake_verifies_ip_and_dns_sans(tmp_path, host):
    b = pki.make_bundle(["127.0.0.1", "localhost"])
    (tmp_path / "c").write_bytes(b.tls_cert)
    (tmp_path / "k").write_bytes(b.tls_key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "c", tmp_path / "k")
    port, t = serve_once(server)
    client = ssl.create_default_context(cadata=b.ca_cert.decode())
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.recv(2) == b"hi"
    t.join(5)
