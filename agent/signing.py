"""Ed25519 signatures over snapshot manifests: who may put code into restored pods.

Whoever can write the artifact store can make every restored pod run their
code, so a node that restores should only trust snapshots signed by the
agent's key. The signature covers the exact bytes of ``manifest.json``; the
manifest lists every other file with its size and sha256 (checked by
``agent.store.verify``), so one signature vouches for the whole artifact.

``manifest.sig`` (``contract.MANIFEST_SIGNATURE_FILE``) holds one line: the
base64 of the 64-byte Ed25519 signature. Keys are PEM files: PKCS#8 private
key (mode 0600) and SubjectPublicKeyInfo public key, as ``thaw snapshot
keygen`` writes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.store import SnapshotInvalid
from thaw.contract import MANIFEST_FILE, MANIFEST_SIGNATURE_FILE, Manifest, ManifestError
from thaw.safe_files import MAX_SIGNATURE_BYTES, UnsafeFile, read_manifest_bytes, read_small_file

PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"
SIGNATURE_BYTES = 64
MAX_SIGNATURE_FILE_BYTES = MAX_SIGNATURE_BYTES  # a signature line is ~90 bytes


class SigningError(ValueError):
    """A key that cannot be read or used (missing, wrong type, bad PEM, bad mode)."""


class SignatureInvalid(SnapshotInvalid):
    """A snapshot whose signature is missing, malformed, or not by the configured key."""


class ForeignSnapshot(SnapshotInvalid):
    """A snapshot taken in another namespace than the pod that asks to restore it."""


# --- keys -------------------------------------------------------------------------------
def generate_keypair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``signing.key`` (0600) and ``signing.pub`` into ``out_dir``; never overwrite."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise SigningError(f"{p} already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL + mode at creation: the private key is never readable by others, not even briefly.
    _write_new(key_path, private_pem, 0o600)
    _write_new(pub_path, public_pem, 0o644)
    return key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # not narrowed or widened by the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    p = Path(path)
    data = _read_key_file(p)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningError(f"{p} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{p} is a {type(key).__name__}, not an Ed25519 private key")
    if os.stat(p).st_mode & 0o077:  # the chart mounts its Secret with defaultMode 0400
        raise SigningError(f"{p} is accessible by group or others; chmod 600 it")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    p = Path(path)
    data = _read_key_file(p)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SigningError(f"{p} is not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{p} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def _read_key_file(p: Path) -> bytes:
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"key file {p} does not exist") from None
    except OSError as e:
        raise SigningError(f"cannot read key file {p}: {e.strerror}") from None
    if not data.strip():
        raise SigningError(f"key file {p} is empty")
    return data


def fingerprint(key: Ed25519PublicKey) -> str:
    """Short, stable name of a public key for messages: sha256 of the raw 32 bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


# --- snapshots --------------------------------------------------------------------------
def sign_snapshot(
    snapshot_dir: str | os.PathLike[str], private_key_path: str | os.PathLike[str]
) -> Path:
    """Sign ``snapshot_dir/manifest.json`` as it is on disk; write the signature beside it.

    Meant for the staging folder, after the manifest is written and before it is
    published, so a snapshot is never visible unsigned. Returns the signature path.
    """
    folder = Path(snapshot_dir)
    key = load_private_key(private_key_path)
    manifest = _read_manifest_bytes(folder)
    signature = key.sign(manifest)
    sig_path = folder / MANIFEST_SIGNATURE_FILE
    tmp = folder / f".{MANIFEST_SIGNATURE_FILE}.tmp"
    tmp.unlink(missing_ok=True)
    _write_new(tmp, base64.b64encode(signature) + b"\n", 0o644)
    os.replace(tmp, sig_path)
    return sig_path


PublicKey = str | os.PathLike[str] | Ed25519PublicKey


def verify_signature(snapshot_dir: str | os.PathLike[str], public_key: PublicKey) -> bytes:
    """Check ``manifest.sig`` against ``manifest.json`` and the public key.

    ``public_key`` is a PEM file or a loaded key (an agent holding the private key
    verifies with its public half). Returns the verified manifest bytes, so a
    caller can parse exactly what was checked. Raises ``SignatureInvalid`` for an
    unsigned, tampered or wrongly signed snapshot, ``SigningError`` for an
    unusable key.
    """
    folder = Path(snapshot_dir)
    key = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(public_key)
    manifest = _read_manifest_bytes(folder)
    try:
        raw = read_small_file(folder / MANIFEST_SIGNATURE_FILE, MAX_SIGNATURE_FILE_BYTES)
    except FileNotFoundError:
        raise SignatureInvalid(
            f"{folder.name}: unsigned ({MANIFEST_SIGNATURE_FILE} missing) but a public key "
            f"({fingerprint(key)}) is configured: only signed snapshots are restored"
        ) from None
    except UnsafeFile as e:
        raise SignatureInvalid(f"{folder.name}: {e}") from None
    except OSError as e:
        raise SignatureInvalid(
            f"{folder.name}: cannot read {MANIFEST_SIGNATURE_FILE}: {e}"
        ) from None
    try:
        signature = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid(f"{folder.name}: {MANIFEST_SIGNATURE_FILE} is not base64") from None
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureInvalid(
            f"{folder.name}: {MANIFEST_SIGNATURE_FILE} holds {len(signature)} bytes, "
            f"an Ed25519 signature has {SIGNATURE_BYTES}"
        )
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise SignatureInvalid(
            f"{folder.name}: signature does not match: the manifest was changed after "
            f"signing, or it was signed by a key other than {fingerprint(key)}"
        ) from None
    return manifest


def authorize_restore(
    snapshot_dir: str | os.PathLike[str],
    namespace: str,
    public_key: PublicKey | None = None,
) -> Manifest:
    """May a pod in ``namespace`` restore this snapshot? Returns its manifest, else raises.

    The snapshot name a pod asks for comes from its own annotations, which its
    author can write, so the agent cannot take it on trust: a snapshot holds the
    memory of the process it was taken from (weights, tokens, secrets), and only
    pods of the namespace it came from may get it (operator-made snapshots, with
    no namespace, are restorable anywhere). With a public key configured
    the manifest must also carry a valid signature. ``agent.store.verify``
    still checks every file against the manifest.
    """
    folder = Path(snapshot_dir)
    if public_key is not None:
        raw = verify_signature(folder, public_key)
    else:
        raw = _read_manifest_bytes(folder)
    try:
        manifest = Manifest.from_json(raw)
    except ManifestError as e:
        raise SnapshotInvalid(f"{folder.name}: {e}") from None
    # A snapshot without a namespace was made outside any pod (``thaw snapshot
    # checkpoint`` by the node's operator); the agent always records the pod's.
    if manifest.source.namespace and manifest.source.namespace != namespace:
        raise ForeignSnapshot(
            f"{folder.name}: taken in namespace {manifest.source.namespace!r}; "
            f"a pod in {namespace!r} may not restore it"
        )
    return manifest


def _read_manifest_bytes(folder: Path) -> bytes:
    try:
        return read_manifest_bytes(folder)
    except FileNotFoundError:
        raise SignatureInvalid(f"{folder.name}: {MANIFEST_FILE} is missing") from None
    except UnsafeFile as e:
        raise SignatureInvalid(f"{folder.name}: {e}") from None
    except OSError as e:
        raise SignatureInvalid(f"{folder.name}: cannot read {MANIFEST_FILE}: {e}") from None
