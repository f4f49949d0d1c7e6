"""Read the history rows of an offline ``.wandb`` file (tests only; wandb ships no reader).

The file is a 7-byte header (``:W&B``, a 2-byte magic, a version byte) followed by a LevelDB-style
log: 32 KiB blocks of records, each ``crc32 (4) | length (2, little endian) | type (1) | data``,
where type 1 is a whole record and 2/3/4 the first/middle/last fragment of one. Each record's data
is a ``wandb.proto.wandb_internal_pb2.Record``; history rows carry ``item`` key / ``value_json``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(data: bytes):
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        space = BLOCK - pos % BLOCK
        if space < 7:  # block trailer: zero padding
            pos += space
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0


def history(path: str | Path) -> list[dict]:
    """Every history row of the run as a dict of key -> decoded JSON value."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in _records(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def artifacts(path: str | Path) -> list[tuple[str, str]]:
    """(name, type) of every artifact the run logged."""
    from wandb.proto import wandb_internal_pb2

    found = []
    for raw in _records(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "artifact":
            found.append((record.artifact.name, record.artifact.type))
    return found


def _updates(path: str | Path, kind: str) -> dict:
    """The merged ``update`` items of every ``kind`` record ("config" or "summary"), later ones winning."""
    from wandb.proto import wandb_internal_pb2

    merged = {}
    for raw in _records(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == kind:
            for item in getattr(record, kind).update:
                merged[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return merged


def config(path: str | Path) -> dict:
    """The run's config as W&B holds it (key -> value)."""
    return {
        key: value.get("value") if isinstance(value, dict) else value
        for key, value in _updates(path, "config").items()
    }


def summary(path: str | Path) -> dict:
    """The run's summary as last written (key -> value)."""
    return _updates(path, "summary")


def wait_until_written(path: str | Path, timeout: float = 30.0) -> Path:
    """Wait until the W&B service has written the run's ``exit`` record: ``wandb.finish()`` can return
    before the service process has flushed the last records of an offline run to the file."""
    import time

    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        for raw in _records(Path(path).read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "exit":
                return Path(path)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout} s")
        time.sleep(0.2)
