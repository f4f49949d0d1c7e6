"""Checksums of an export: recorded when it is written, verified when it is loaded.

``export`` ends by writing ``checksums.sha256``: one ``<sha256>  <relative path>`` line per file of
the folder (the format ``sha256sum -c checksums.sha256`` reads). ``Reranker.from_pretrained`` (and so
``evaluate --model``) verifies a folder that has the file before it reads anything else: a weight
file overwritten or truncated after export, a ``rerank_config.json`` whose objective was edited, or
a file the list names that is missing, is refused with one line naming the file. ``verify=False``
(``--no-verify``) loads it anyway, for a folder changed on purpose. Folders without the file
(exported before checksums, or a plain base model) load unverified.

Cost: hashing reads every byte once (about 1 s per GB on one core), small next to loading the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from datamodules.files import atomic_write

CHECKSUMS = "checksums.sha256"
CHUNK = 1 << 20


class ExportIntegrityError(ValueError):
    """An export's files do not match the checksums recorded when it was written."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksums(folder: Path) -> Path:
    """Write ``checksums.sha256`` listing every file under ``folder`` (itself excepted), sorted."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    path = folder / CHECKSUMS
    atomic_write(path, lambda handle: handle.write("".join(lines).encode("utf-8")))
    return path


def read_checksums(folder: Path) -> dict[str, str] | None:
    """``{relative path: sha256}`` of ``folder``'s checksum file, or ``None`` when it has none."""
    path = Path(folder) / CHECKSUMS
    if not path.is_file():
        return None
    entries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        relative = Path(name)
        if not sep or len(digest) != 64 or relative.is_absolute() or ".." in relative.parts:
            raise ExportIntegrityError(f"{path}:{number}: not a '<sha256>  <file in the folder>' line")
        entries[name] = digest.lower()
    return entries


def verify_export(folder: str | Path) -> bool:
    """Check ``folder`` against its ``checksums.sha256``. Returns whether there was one to check.

    Raises:
        ExportIntegrityError: a listed file is missing or its bytes changed since export (one line).
    """
    folder = Path(folder)
    entries = read_checksums(folder)
    if entries is None:
        return False
    hint = "re-export it, or load with verify=False (--no-verify) if the change is intended"
    for name, digest in entries.items():
        path = folder / name
        if not path.is_file():
            raise ExportIntegrityError(f"{path}: listed in {CHECKSUMS} but missing; {hint}")
        if sha256_file(path) != digest:
            raise ExportIntegrityError(
                f"{path}: its SHA-256 differs from the one recorded at export ({CHECKSUMS}): the file "
                f"was modified or truncated; {hint}"
            )
    return True
