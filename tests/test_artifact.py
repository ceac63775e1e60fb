"""The .sqz artifact: round trip, checksums, truncation, version check, atomic writes."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import squeezer
from squeezer.artifact import FORMAT_VERSION, pack, read_artifact, write_artifact
from squeezer.errors import ArtifactError


def test_round_trip(tiny_artifact, tiny_compiled, tiny_input):
    loaded = squeezer.load(tiny_artifact)
    np.testing.assert_array_equal(loaded(tiny_input), tiny_compiled(tiny_input))
    m = loaded.manifest
    assert m["format_version"] == FORMAT_VERSION
    assert m["squeezer_version"] == squeezer.__version__
    assert m["target"]["kind"] == "cpu" and m["target"]["mcpu"]
    assert m["inputs"] == [{"name": "input", "shape": [1, 3, 16, 16], "dtype": "float32"}] or \
        m["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert m["summary"]["params"] == sum(
        r["params"] for r in m["layers"]) and m["summary"]["flops"] > 0
    assert m["verified"]["output"]["max_abs"] < 1e-4
    assert set(m["members"]) == {"model.so"}


def _rewrite(src, dst, mutate_manifest=None, mutate_member=None):
    """Change an artifact's content and reseal the file, as a forger who knows the format would:
    only the manifest's member checksums and version fields stand in the way."""
    contents = read_artifact(src)
    manifest = json.loads(json.dumps(contents.manifest))
    members = dict(contents.members)
    if mutate_manifest:
        mutate_manifest(manifest)
    if mutate_member:
        members = {k: mutate_member(v) for k, v in members.items()}
    dst.write_bytes(pack(manifest, members))


def test_flipped_byte_anywhere_is_refused(tiny_artifact, tmp_path):
    raw = bytearray(tiny_artifact.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(raw), size=8, replace=False):
        bad = bytearray(raw)
        bad[pos] ^= 0x40
        path = tmp_path / f"flip{pos}.sqz"
        path.write_bytes(bytes(bad))
        with pytest.raises(ArtifactError, match=str(path)):
            squeezer.load(path)


def test_tampered_member_with_valid_zip_is_refused(tiny_artifact, tmp_path):
    path = tmp_path / "tampered.sqz"
    _rewrite(tiny_artifact, path, mutate_member=lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])
    with pytest.raises(ArtifactError, match="checksum mismatch in member 'model.so'"):
        squeezer.load(path)


def test_truncated_is_refused(tiny_artifact, tmp_path):
    raw = tiny_artifact.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 1):
        path = tmp_path / f"cut{cut}.sqz"
        path.write_bytes(raw[:cut])
        with pytest.raises(ArtifactError, match="corrupt or truncated"):
            squeezer.load(path)


def test_newer_squeezer_is_refused(tiny_artifact, tmp_path):
    path = tmp_path / "newer.sqz"
    _rewrite(tiny_artifact, path, mutate_manifest=lambda m: m.update(squeezer_version="99.0.0"))
    with pytest.raises(ArtifactError, match="written by squeezer 99.0.0.*upgrade"):
        squeezer.load(path)
    path2 = tmp_path / "newer_format.sqz"
    _rewrite(tiny_artifact, path2, mutate_manifest=lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="format 99"):
        squeezer.load(path2)


def test_missing_and_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        squeezer.load(tmp_path / "nope.sqz")
    plain = tmp_path / "plain.sqz"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ArtifactError, match="not a squeezer artifact"):
        read_artifact(plain)
    sealed_plain = tmp_path / "sealed_plain.sqz"
    sealed_plain.write_bytes(pack({}, {"hello.txt": b"hi"})[:-64] + b"0" * 64)
    with pytest.raises(ArtifactError, match="checksum"):
        read_artifact(sealed_plain)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.sqz"
    write_artifact(path, {"squeezer_version": squeezer.__version__}, {"x.bin": b"old"})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(KeyboardInterrupt):
        write_artifact(path, {"squeezer_version": squeezer.__version__}, {"x.bin": b"new"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sqz"]
    assert read_artifact(path).members == {"x.bin": b"old"}
