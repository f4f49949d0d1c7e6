"""The shard index of the training stream: record counts and block offsets of every JSONL /
JSONL.gz shard, found in one pass without parsing JSON (see :mod:`datamodules.stream` for how an
epoch is laid out over it). Shards that cannot be read (not a regular file, truncated gzip, not
gzip, no record) are refused with ``file:line: reason`` or, with ``on_bad_record="skip"``, left
out and listed.
"""

from __future__ import annotations

import gzip
import hashlib
import posixpath
import zlib
from dataclasses import dataclass, field
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from datamodules.files import is_hidden
from datamodules.formats import SHARD_SUFFIXES, FormatError, warn_leftovers
from datamodules.trec import read_error_reason

__all__ = ["Block", "StreamIndex", "list_shards"]


def list_shards(root: str, storage_options: dict | None = None) -> tuple[Any, str, list[str]]:
    """The filesystem of ``root``, its path there, and its JSONL / JSONL.gz shards (sorted paths).

    Hidden names (a part starting with ``.``, e.g. what a killed mine left) are never shards; local
    leftovers of killed processes are logged."""
    fs, path = url_to_fs(str(root), **(storage_options or {}))
    if fs.isfile(path):
        if not path.endswith(SHARD_SUFFIXES):
            raise FormatError(f"{root}: a training file must end in .jsonl or .jsonl.gz")
        return fs, path, [path]
    if not fs.isdir(path):
        raise FormatError(f"{root}: training root not found")
    if isinstance(fs, LocalFileSystem):
        warn_leftovers(path)
    shards = sorted(
        p for p in fs.find(path) if p.endswith(SHARD_SUFFIXES) and not is_hidden(posixpath.relpath(p, path))
    )
    if not shards:
        raise FormatError(f"{root}: no .jsonl or .jsonl.gz training files found")
    return fs, path, shards


@dataclass(frozen=True)
class Block:
    """``count`` consecutive records of one shard, starting at record ``first`` (line ``line``,
    byte ``offset``; a gzip shard is a single block starting at byte 0)."""

    file: int
    first: int
    count: int
    offset: int
    line: int


def _scan_plain(handle, file_id: int, block_size: int) -> tuple[int, list[Block]]:
    starts: list[tuple[int, int, int]] = []  # (first record, byte offset, line)
    count = offset = 0
    for lineno, raw in enumerate(handle, start=1):
        if raw.strip():
            if count % block_size == 0:
                starts.append((count, offset, lineno))
            count += 1
        offset += len(raw)
    ends = [first for first, _, _ in starts[1:]] + [count]
    return count, [
        Block(file_id, first, end - first, off, line)
        for (first, off, line), end in zip(starts, ends[: len(starts)], strict=True)
    ]


def _scan_gzip(handle, file_id: int) -> tuple[int, list[Block], str | None]:
    """Records of a gzip shard (one block) and, if it cannot be read to its end, why (``line: reason``).

    The records before the damage are kept: the same bytes are read again when the block is
    streamed, and reading stops before the damage (at ``count`` records).
    """
    count = lineno = 0
    problem = None
    try:
        with gzip.GzipFile(fileobj=handle, mode="rb") as unzipped:
            for lineno, raw in enumerate(unzipped, start=1):  # noqa: B007 - lineno is reported below
                if raw.strip():
                    count += 1
    except (OSError, EOFError, zlib.error) as err:
        problem = f"{lineno + 1}: {read_error_reason(err)}"
    return count, [Block(file_id, 0, count, 0, 1)] if count else [], problem


@dataclass
class StreamIndex:
    """Record counts and block offsets of every shard: O(shards + records / block_size) memory."""

    root: str
    block_size: int
    files: list[str]  # paths as the filesystem names them (no protocol)
    display: list[str]  # what messages call them (local path or URL)
    records: list[int]
    blocks: list[Block]
    fingerprint: str
    fs: Any = field(repr=False, default=None)
    problems: list[str] = field(default_factory=list)  # "file:line: reason" of shards left out

    @property
    def num_records(self) -> int:
        return sum(self.records)

    @classmethod
    def build(
        cls,
        root: str,
        block_size: int = 128,
        storage_options: dict | None = None,
        on_bad_record: str = "error",
    ) -> StreamIndex:
        """One pass over every shard: counts non-blank lines, notes block offsets (no JSON parsing).

        A shard that cannot be read (not a regular file, truncated gzip, not gzip although named
        ``.gz``) or holds no record raises ``file:line: reason`` with ``on_bad_record="error"``;
        with ``"skip"`` it is left out (a damaged gzip shard keeps the records before the damage)
        and listed in ``problems``.
        """
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        fs, root_path, shards = list_shards(root, storage_options)
        display = (
            list(shards) if isinstance(fs, LocalFileSystem) else [fs.unstrip_protocol(p) for p in shards]
        )
        records: list[int] = []
        blocks: list[Block] = []
        problems: list[str] = []
        digest = hashlib.sha1()
        for file_id, path in enumerate(shards):
            count, problem = 0, None
            file_blocks: list[Block] = []
            if fs.info(path).get("type") != "file":  # a named pipe would block the reader forever
                problem = (
                    "1: not a regular file (a named pipe, device or folder); remove it from the training root"
                )
            elif path.endswith(".gz"):
                with fs.open(path, "rb") as handle:
                    count, file_blocks, problem = _scan_gzip(handle, file_id)
            else:
                with fs.open(path, "rb") as handle:
                    count, file_blocks = _scan_plain(handle, file_id, block_size)
            if problem is None and count == 0:
                problem = "1: the shard holds no records (empty or blank lines only); remove it or fill it"
            if problem is not None:
                message = f"{display[file_id]}:{problem}"
                if on_bad_record == "error":
                    raise FormatError(message)
                problems.append(message)
            records.append(count)
            blocks.extend(file_blocks)
            name = posixpath.relpath(path, root_path) if path != root_path else posixpath.basename(path)
            digest.update(f"{name}\0{count}\n".encode())
        return cls(
            str(root), block_size, list(shards), display, records, blocks, digest.hexdigest(), fs, problems
        )
