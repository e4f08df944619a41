"""Cert files on disk: written atomically, re-read by the server when they change."""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from pathlib import Path

from certs.pki import Bundle

log = logging.getLogger(__name__)

CA_CERT_FILE = "ca.crt"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bundle(out: str | os.PathLike[str], bundle: Bundle) -> list[Path]:
    """``ca.crt``, ``tls.crt``, ``tls.key`` (0600). The CA key is not written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data, mode in (
        (CA_CERT_FILE, bundle.ca_cert, 0o644),
        (TLS_KEY_FILE, bundle.tls_key, 0o600),
        (TLS_CERT_FILE, bundle.tls_cert, 0o644),
    ):
        write_atomic(out / name, data, mode)
        written.append(out / name)
    return written


class ServingCert:
    """A server SSLContext whose cert chain follows the files on disk.

    ``load_cert_chain`` on the live context affects every handshake after it,
    so rotated files are served without a restart or a new listener. A
    half-rotated pair (new cert, old key) fails to load and is retried on the
    next check while the old chain keeps serving.
    """

    def __init__(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]):
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.loaded = False
        self.generation = 0  # how many chains have been loaded
        self._stamp: tuple | None = None

    def _files_stamp(self) -> tuple:
        return tuple(
            (s.st_mtime_ns, s.st_size, s.st_ino)
            for s in (self.cert_file.stat(), self.key_file.stat())
        )

    def reload_if_changed(self) -> bool:
        try:
            stamp = self._files_stamp()
        except OSError as e:
            log.warning("serving certificate not readable yet: %s", e)
            return False
        if stamp == self._stamp:
            return False
        try:
            self._load(self.cert_file.read_bytes(), self.key_file.read_bytes())
        except (OSError, ssl.SSLError) as e:
            log.warning("serving certificate not loaded (will retry): %s", e)
            return False
        self._stamp = stamp
        self.loaded = True
        self.generation += 1
        log.info("loaded serving certificate %s (generation %d)", self.cert_file, self.generation)
        return True

    def _load(self, cert: bytes, key: bytes) -> None:
        """Try the pair on a scratch context first: a failed load on the live one
        could leave it with a certificate but no matching key."""
        with tempfile.TemporaryDirectory(prefix="thaw-tls-") as tmp:
            cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert_path.write_bytes(cert)
            key_path.touch(mode=0o600)
            key_path.write_bytes(key)
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
            self.context.load_cert_chain(cert_path, key_path)
