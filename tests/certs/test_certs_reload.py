"""ServingCert: rotated files served without restart; a half-written pair never breaks serving."""

from __future__ import annotations

import socket
import ssl

from certs_support import serve_once

from certs import files, pki


def handshake_ca(port: int, ca: bytes) -> bool:
    client = ssl.create_default_context(cadata=ca.decode())
    with socket.create_connection(("127.0.0.1", port)) as raw:
        try:
            with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.recv(2) == b"hi"
        except ssl.SSLCertVerificationError:
            return False


def test_reload_follows_files_and_survives_a_half_rotation(tmp_path):
    old = pki.make_bundle(["127.0.0.1"])
    files.write_bundle(tmp_path, old)
    cert = files.ServingCert(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert cert.reload_if_changed() and cert.loaded and cert.generation == 1
    assert not cert.reload_if_changed()  # unchanged files: nothing to do

    new = pki.make_bundle(["127.0.0.1"])
    files.write_atomic(tmp_path / "tls.crt", new.tls_cert)  # the key is still the old one
    assert not cert.reload_if_changed()
    port, t = serve_once(cert.context)
    assert handshake_ca(port, old.ca_cert), "old pair must keep serving"
    t.join(5)

    files.write_atomic(tmp_path / "tls.key", new.tls_key, 0o600)
    assert cert.reload_if_changed() and cert.generation == 2
    port, t = serve_once(cert.context)
    assert handshake_ca(port, new.ca_cert)
    t.join(5)
    port, t = serve_once(cert.context)
    assert not handshake_ca(port, old.ca_cert)
    t.join(5)


def test_missing_files_mean_not_loaded(tmp_path):
    cert = files.ServingCert(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert not cert.reload_if_changed() and not cert.loaded
