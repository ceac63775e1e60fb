"""The ``.sqz`` artifact: one zip holding the compiled library and ``manifest.json``.

The manifest records the sha256 of every other member; loading refuses a member whose digest,
size or presence differs, a zip whose CRC fails, and a manifest written by a newer format. The zip
comment holds the sha256 of the whole file (computed with the comment zeroed), so a flipped byte
anywhere, even in zip metadata that no member checksum covers, is refused too. Writes
go to a temporary file in the destination folder and are renamed into place, so an interrupted
save never leaves a half-written artifact under the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from squeezer.errors import ArtifactError

FORMAT_VERSION = 1
_SEAL_LEN = 64  # hex sha256 in the zip comment, the last bytes of the file
_BLANK_SEAL = b"0" * _SEAL_LEN
MANIFEST = "manifest.json"
LIBRARY = "model.so"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in str(v).split("+")[0].split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclass
class ArtifactContents:
    manifest: dict
    members: dict[str, bytes]


def write_artifact(path: str | os.PathLike, manifest: dict, members: dict[str, bytes]) -> Path:
    """Write ``members`` and ``manifest`` (checksums added) to ``path`` atomically."""
    path = Path(path)
    if MANIFEST in members:
        raise ValueError(f"member name {MANIFEST!r} is reserved")
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["members"] = {
        name: {"sha256": sha256(data), "bytes": len(data)} for name, data in members.items()
    }
    sealed = pack(manifest, members)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(sealed)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; an artifact is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def pack(manifest: dict, members: dict[str, bytes]) -> bytes:
    """The sealed zip bytes of ``manifest`` (written as given) and ``members``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        for name, data in members.items():
            zf.writestr(name, data)
        zf.comment = _BLANK_SEAL
    raw = buf.getvalue()
    return raw[:-_SEAL_LEN] + sha256(raw).encode()


def read_artifact(path: str | os.PathLike) -> ArtifactContents:
    """Read and check an artifact; any inconsistency is an :class:`ArtifactError`."""
    from squeezer import __version__

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: artifact not found")
    raw = path.read_bytes()
    seal = raw[-_SEAL_LEN:]
    if len(raw) < _SEAL_LEN or sha256(raw[:-_SEAL_LEN] + _BLANK_SEAL).encode() != seal:
        if _unsealed_zip(raw):
            raise ArtifactError(f"{path}: not a squeezer artifact (no checksum seal)")
        raise ArtifactError(f"{path}: corrupt or truncated artifact (file checksum mismatch)")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = zf.namelist()
            if MANIFEST not in names:
                raise ArtifactError(f"{path}: not a squeezer artifact (no {MANIFEST})")
            manifest = json.loads(zf.read(MANIFEST))
            _check_version(path, manifest, __version__)
            listed = manifest.get("members", {})
            members = {name: zf.read(name) for name in names if name != MANIFEST}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated artifact: {err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: corrupt manifest: {err}") from None
    missing = sorted(set(listed) - set(members))
    extra = sorted(set(members) - set(listed))
    if missing or extra:
        raise ArtifactError(f"{path}: members differ from the manifest: missing {missing}, "
                            f"unlisted {extra}")
    for name, data in members.items():
        want = listed[name]
        if len(data) != want.get("bytes") or sha256(data) != want.get("sha256"):
            raise ArtifactError(
                f"{path}: checksum mismatch in member {name!r} (tampered or corrupt artifact)"
            )
    return ArtifactContents(manifest, members)


def _unsealed_zip(raw: bytes) -> bool:
    """A well-formed zip without a seal: some other zip file, not a damaged artifact."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return len(zf.comment) == 0
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _check_version(path: Path, manifest: dict, ours: str) -> None:
    fmt = manifest.get("format_version")
    if not isinstance(fmt, int):
        raise ArtifactError(f"{path}: manifest has no integer format_version")
    theirs = str(manifest.get("squeezer_version", "0"))
    if fmt > FORMAT_VERSION or _version_tuple(theirs) > _version_tuple(ours):
        raise ArtifactError(
            f"{path}: written by squeezer {theirs} (artifact format {fmt}); this is squeezer "
            f"{ours}, which reads formats <= {FORMAT_VERSION}: upgrade squeezer to load it"
        )
