"""Record schema (one msgpack map per image-text pair) and ArrayRecord shard IO.

A record is `{"key": str, "image": bytes, "captions": {field: str}}`. The image is kept
exactly as encoded (JPEG/PNG bytes) so conversion never re-encodes, and several caption
fields (e.g. alt-text and a re-caption) can live side by side; the config picks one.

A record may also carry `"regions": [{"box": [x0, y0, x1, y1], "caption": str}, ...]`:
boxes in pixels of the stored image (x to the right, y down, x1/y1 exclusive), each with
its own caption. Region-level recipes (MM-GEM's second stage) read them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

import msgpack
from array_record.python import array_record_module

from openvision2 import paths as paths_lib

SHARD_SUFFIX = ".array_record"


def encode_record(key: str, image: bytes, captions: dict[str, str], regions: list[dict] | None = None) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"record key must be str, got {type(key).__name__}")
    if not isinstance(image, (bytes, bytearray)):
        raise TypeError(f"record image must be encoded bytes, got {type(image).__name__}")
    for field, text in captions.items():
        if not isinstance(field, str) or not isinstance(text, str):
            raise TypeError(f"captions must map str to str, got {field!r}: {type(text).__name__}")
    record = {"key": key, "image": bytes(image), "captions": dict(captions)}
    if regions is not None:
        record["regions"] = [{"box": [float(v) for v in r["box"]], "caption": r["caption"]} for r in regions]
        _check_regions(record["regions"], TypeError)
    return msgpack.packb(record, use_bin_type=True)


def _check_regions(regions, error) -> None:
    if not isinstance(regions, list):
        raise error("record field 'regions' must be a list")
    for r in regions:
        box = r.get("box") if isinstance(r, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise error(f"region {r!r} needs a 'box' of 4 numbers [x0, y0, x1, y1]")
        if not (box[2] > box[0] and box[3] > box[1]):
            raise error(f"region box {box} is empty: need x1 > x0 and y1 > y0")
        if not isinstance(r.get("caption"), str):
            raise error(f"region {r!r} needs a string 'caption'")


def decode_record(raw: bytes) -> dict:
    """Inverse of `encode_record`; raises ValueError on anything that is not a valid record."""
    try:
        record = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # msgpack raises several unrelated types for garbage input.
        raise ValueError(f"record is not valid msgpack ({type(e).__name__}: {e})") from e
    if not isinstance(record, dict):
        raise ValueError(f"record must be a msgpack map, got {type(record).__name__}")
    missing = {"key", "image", "captions"} - record.keys()
    if missing:
        raise ValueError(f"record is missing fields {sorted(missing)}")
    if not isinstance(record["key"], str):
        raise ValueError("record field 'key' must be a string")
    if not isinstance(record["image"], bytes):
        raise ValueError("record field 'image' must be bytes")
    captions = record["captions"]
    if not isinstance(captions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in captions.items()
    ):
        raise ValueError("record field 'captions' must map strings to strings")
    if "regions" in record:
        _check_regions(record["regions"], ValueError)
    return record


def shard_name(prefix: str, index: int, num_shards: int) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def write_shards(records: Iterable[bytes], out_dir: str, prefix: str, num_shards: int) -> list[str]:
    """Writes records round-robin (record i -> shard i % num_shards); returns the shard paths.

    Round-robin streams (no need to know the count up front) and keeps shards balanced.
    Shards are written under a temporary name that does not match `*.array_record` and
    renamed only after every shard is closed, so a crash never leaves a readable half shard.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    os.makedirs(out_dir, exist_ok=True)
    finals = [os.path.join(out_dir, shard_name(prefix, i, num_shards)) for i in range(num_shards)]
    temps = [f"{p}.tmp{os.getpid()}" for p in finals]
    writers = [array_record_module.ArrayRecordWriter(t, "group_size:1") for t in temps]
    try:
        for i, record in enumerate(records):
            writers[i % num_shards].write(record)
    except BaseException:
        for w, t in zip(writers, temps):
            w.close()
            os.remove(t)
        raise
    for w in writers:
        w.close()
    for t, p in zip(temps, finals):
        os.replace(t, p)
    return finals


def resolve_paths(spec: str) -> list[str]:
    """Expands a directory, a glob, or a comma-separated list of those into sorted shard paths;
    local or on cloud storage (`gs://bucket/recap/train-*.array_record`, read in place)."""
    paths: set[str] = set()
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    for part in parts:
        if not paths_lib.is_remote(part):
            part = os.path.expanduser(part)
        if not any(c in part for c in "*?[") and paths_lib.isdir(part):
            paths.update(paths_lib.glob(paths_lib.join(part, f"*{SHARD_SUFFIX}")))
        elif paths_lib.is_remote(part):
            paths.update(paths_lib.glob(part))  # listed objects are files
        else:
            paths.update(p for p in glob.glob(part) if os.path.isfile(p))
    if not paths:
        raise FileNotFoundError(
                f"no ArrayRecord shards found for {spec!r}: give a directory holding *{SHARD_SUFFIX}"
                " files, a glob, or a comma-separated list of those"
        )
    return sorted(paths)
