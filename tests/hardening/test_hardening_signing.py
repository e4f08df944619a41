"""Signed manifests with real Ed25519 keys and real tampering of published snapshots."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hardening_support import publish_snapshot

from agent.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    SignatureInvalid,
    SigningError,
    generate_keypair,
    sign_snapshot,
    verify_signature,
)
from agent.store import SnapshotInvalid, verify
from thaw import contract


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def signed(tmp_path, keys):
    folder = publish_snapshot(tmp_path / "store")
    sign_snapshot(folder, keys[0])
    return folder


def test_keygen_writes_private_0600_and_public_and_never_overwrites(tmp_path):
    os.umask(0o000)  # a careless umask must not widen the private key
    try:
        key, pub = generate_keypair(tmp_path / "k")
    finally:
        os.umask(0o022)
    assert (key.name, pub.name) == (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    before = key.read_bytes()
    with pytest.raises(SigningError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k")
    assert key.read_bytes() == before


def test_signed_snapshot_verifies_and_returns_the_exact_manifest(signed, keys):
    manifest_bytes = verify_signature(signed, keys[1])
    assert manifest_bytes == (signed / contract.MANIFEST_FILE).read_bytes()
    sig = (signed / contract.MANIFEST_SIGNATURE_FILE).read_bytes()
    assert len(base64.b64decode(sig.strip())) == 64
    verify(signed, check_compat=False)  # the signature file is not an unlisted extra


def test_unsigned_snapshot_is_refused_when_a_key_is_configured(tmp_path, keys):
    folder = publish_snapshot(tmp_path / "store")
    with pytest.raises(SignatureInvalid, match="unsigned"):
        verify_signature(folder, keys[1])


def test_tampered_manifest_is_refused(signed, keys):
    path = signed / contract.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["image"] = "attacker/evil:latest"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(SignatureInvalid, match="changed after signing"):
        verify_signature(signed, keys[1])


def test_one_flipped_byte_in_the_manifest_is_refused(signed, keys):
    path = signed / contract.MANIFEST_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SignatureInvalid):
        verify_signature(signed, keys[1])


def test_tampered_image_file_is_caught_through_the_signed_checksums(signed, keys):
    """Changing a CRIU image keeps the signature valid but breaks its signed sha256;
    rewriting the sha256 in the manifest to match breaks the signature."""
    image = signed / contract.CRIU_IMAGES_DIR / "pages-1.img"
    data = bytearray(image.read_bytes())
    data[100] ^= 0xFF
    image.write_bytes(bytes(data))
    verify_signature(signed, keys[1])
    with pytest.raises(SnapshotInvalid, match="checksum mismatch"):
        verify(signed, check_compat=False)

    from agent.store import file_entries

    path = signed / contract.MANIFEST_FILE
    manifest = contract.Manifest.from_json(path.read_bytes())
    fixed = json.loads(manifest.to_json())
    fixed["files"] = [dict(path=f.path, size=f.size, sha256=f.sha256) for f in file_entries(signed)]
    path.write_text(json.dumps(fixed, indent=2, sort_keys=True) + "\n")
    verify(signed, check_compat=False)  # consistent again, but only the signer could do that
    with pytest.raises(SignatureInvalid, match="changed after signing"):
        verify_signature(signed, keys[1])


def test_signature_by_another_key_is_refused(tmp_path, signed):
    _, other_pub = generate_keypair(tmp_path / "other")
    with pytest.raises(SignatureInvalid, match="signed by a key other than ed25519:"):
        verify_signature(signed, other_pub)


def test_resigning_with_another_key_is_refused(tmp_path, signed, keys):
    other_key, _ = generate_keypair(tmp_path / "other")
    sign_snapshot(signed, other_key)
    with pytest.raises(SignatureInvalid):
        verify_signature(signed, keys[1])


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not base64 at all!!\n", "not base64"),
        (base64.b64encode(b"short") + b"\n", "holds 5 bytes"),
        (b"A" * 4096, "too large"),
        (b"", "holds 0 bytes"),
    ],
)
def test_malformed_signature_files_are_refused(signed, keys, content, reason):
    (signed / contract.MANIFEST_SIGNATURE_FILE).write_bytes(content)
    with pytest.raises(SignatureInvalid, match=reason):
        verify_signature(signed, keys[1])


def test_symlinked_signature_or_manifest_is_refused(tmp_path, signed, keys):
    sig = signed / contract.MANIFEST_SIGNATURE_FILE
    real = tmp_path / "elsewhere.sig"
    real.write_bytes(sig.read_bytes())
    sig.unlink()
    sig.symlink_to(real)
    with pytest.raises(SignatureInvalid, match="is a symlink"):
        verify_signature(signed, keys[1])
    sig.unlink()
    sig.write_bytes(real.read_bytes())
    manifest = signed / contract.MANIFEST_FILE
    (tmp_path / "m.json").write_bytes(manifest.read_bytes())
    manifest.unlink()
    manifest.symlink_to(tmp_path / "m.json")
    with pytest.raises(SignatureInvalid, match="is a symlink"):
        verify_signature(signed, keys[1])


def test_bad_keys_are_clear_errors(tmp_path, signed, keys):
    key, pub = keys
    with pytest.raises(SigningError, match="does not exist"):
        verify_signature(signed, tmp_path / "missing.pub")
    with pytest.raises(SigningError, match="not a PEM public key"):
        verify_signature(signed, key)  # a private key where the public one belongs
    with pytest.raises(SigningError, match="not an unencrypted PEM private key"):
        sign_snapshot(signed, pub)
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(SigningError, match="chmod 600"):
        sign_snapshot(signed, loose)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = tmp_path / "ec.key"
    ec_pem.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_pem.chmod(0o600)
    with pytest.raises(SigningError, match="not an Ed25519 private key"):
        sign_snapshot(signed, ec_pem)
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(SigningError, match="not an Ed25519 public key"):
        verify_signature(signed, ec_pub)


def test_missing_manifest_is_refused(signed, keys):
    (signed / contract.MANIFEST_FILE).unlink()
    with pytest.raises(SignatureInvalid, match="missing"):
        verify_signature(signed, keys[1])


def test_restore_of_another_namespaces_snapshot_is_refused(tmp_path, keys):
    """The snapshot name comes from the pod's own (forgeable) annotation."""
    from agent.signing import ForeignSnapshot, authorize_restore

    folder = publish_snapshot(tmp_path / "store", namespace="team-a")
    assert authorize_restore(folder, "team-a").source.namespace == "team-a"
    with pytest.raises(ForeignSnapshot, match="may not restore it"):
        authorize_restore(folder, "team-b")
    with pytest.raises(ForeignSnapshot):
        authorize_restore(folder, "")
    operator_made = publish_snapshot(tmp_path / "store", name="by-hand", namespace="")
    assert authorize_restore(operator_made, "team-b").name == "by-hand"
    # With a key configured, the signature is checked first; both must hold.
    with pytest.raises(SignatureInvalid, match="unsigned"):
        authorize_restore(folder, "team-a", keys[1])
    sign_snapshot(folder, keys[0])
    assert authorize_restore(folder, "team-a", keys[1]).name == folder.name
    with pytest.raises(ForeignSnapshot):
        authorize_restore(folder, "team-b", keys[1])


def test_an_agent_holding_the_private_key_verifies_with_its_public_half(signed, keys, tmp_path):
    from agent.signing import load_private_key

    public = load_private_key(keys[0]).public_key()
    verify_signature(signed, public)
    other = load_private_key(generate_keypair(tmp_path / "other")[0]).public_key()
    with pytest.raises(SignatureInvalid):
        verify_signature(signed, other)
