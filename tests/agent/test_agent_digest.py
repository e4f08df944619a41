"""Piecewise digests: a multi-GB memory image is verified on every core, byte for byte."""

from __future__ import annotations

import hashlib
import os

import pytest

from agent.digest import Digest, digest_many, mismatches
from thaw.contract import FileEntry, Manifest, ManifestError

PIECE = 1 << 20


def test_small_files_carry_plain_sha256_and_big_ones_their_pieces(tmp_path):
    big, small = tmp_path / "pages-1.img", tmp_path / "core.img"
    data = os.urandom(3 * PIECE + 12345)
    big.write_bytes(data)
    small.write_bytes(b"x" * 100)
    d = digest_many([big, small], piece=PIECE)
    pieces = tuple(
        hashlib.sha256(data[i : i + PIECE]).hexdigest() for i in range(0, len(data), PIECE)
    )
    assert d[big].pieces == pieces and d[big].size == len(data)
    assert d[big].sha256 == hashlib.sha256("".join(pieces).encode()).hexdigest()
    assert d[small] == Digest(100, hashlib.sha256(b"x" * 100).hexdigest())  # `sha256sum` agrees


def test_one_flipped_byte_in_any_piece_is_found(tmp_path):
    big, small = tmp_path / "pages-1.img", tmp_path / "core.img"
    big.write_bytes(os.urandom(4 * PIECE))
    small.write_bytes(b"y" * 10)
    d = digest_many([big, small], piece=PIECE)
    checks = [(p, d[p].sha256, PIECE, d[p].pieces) for p in (big, small)]
    assert mismatches(checks) == []
    with open(big, "r+b") as f:  # the last byte of the third piece
        f.seek(3 * PIECE - 1)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 1]))
    small.write_bytes(b"z" * 10)
    assert mismatches(checks) == [big, small]
    # A manifest whose pieces were swapped for others no longer adds up to its sha256.
    forged = [(big, d[big].sha256, PIECE, (d[big].pieces[0],) * 4)]
    assert mismatches(forged) == [big]


def _manifest(entry: FileEntry) -> Manifest:
    return Manifest(
        "n", "k", "2026-11-23T00:00:00Z", "i", "6.1", "x86_64", "4.1.1", 301, files=(entry,)
    )


def test_manifest_round_trips_pieces_and_rejects_pieces_that_do_not_cover_the_file():
    entry = FileEntry("criu/pages-1.img", 3 * PIECE, "ab" * 32, PIECE, ("01" * 32,) * 3)
    assert Manifest.from_json(_manifest(entry).to_json()).files == (entry,)
    short = FileEntry("criu/pages-1.img", 3 * PIECE, "ab" * 32, PIECE, ("01" * 32,) * 2)
    with pytest.raises(ManifestError, match="pieces do not cover"):
        Manifest.from_json(_manifest(short).to_json())
