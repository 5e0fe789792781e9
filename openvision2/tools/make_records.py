r"""Convert image-text pairs (webdataset tars, parquet, jsonl) to ArrayRecord shards.

  openvision2-make-records --input='shards/*.tar' --output=/data/recap \
      --captions=recap_datacomp.parquet --caption-field=re_caption,org_caption --workers=8

Inputs (a glob, or a comma-separated list of globs; files are read in sorted path order):
  *.tar      img2dataset/webdataset tars: members `{key}.jpg|png|webp|...`, `{key}.txt` (caption),
             `{key}.json` (metadata: `url`, `caption`, other caption fields). Members of one sample
             are contiguous, as webdataset writes them; the key is the name up to the first dot.
  *.parquet  rows with an image-bytes column (`jpg`, else `png`/`webp`/`image`, or --image-column),
             caption columns, `key`, optionally `url`.
  *.jsonl    lines `{"image": <path relative to the jsonl file's dir, or absolute>, "caption": ...,
             "<field>": ..., "key": ...}`; without a key the image path is the key.

Each record is `records.encode_record(key, image, captions)`. `captions` holds the source's own
`caption` (the tar's .txt) and every --caption-field found, from the --captions table (joined by
`key`, else by `url`) or else from the source itself. Images are stored byte-for-byte as given
unless --max-side is set and the image is larger (then it is downscaled and re-encoded as JPEG,
upright, alpha composited on white, exactly as training would see it).

Bad input is skipped and counted by reason in <output>/summary.json, never fatal:
  empty_image          zero-byte image
  corrupt_image        identified as an image but does not decode (truncated, damaged)
  not_an_image         not recognised as any image format (text, html, svg, ...)
  unsupported_format   an image format outside --formats
  decompression_bomb   more than --max-pixels pixels (checked from the header, before decoding)
  too_small            shorter side below --min-side
  oversized_file       encoded image larger than --max-image-bytes (not read)
  missing_image        no image (tar sample without an image member, null parquet cell,
                       jsonl path that does not exist or cannot be read)
  missing_caption      no non-empty caption among `caption` and the --caption-field fields
  bad_caption_encoding no usable caption, and at least one was not valid UTF-8
  caption_too_long     no usable caption, and at least one exceeded --max-caption-chars
  malformed_row        a jsonl line that is not a JSON object
  duplicate_key        a valid record whose key an earlier valid record already has
  unreadable_input     an input file that cannot be opened at all (counts as ONE record)
  truncated_input      an input file damaged part way (truncated tar, corrupt parquet row group):
                       the records before the damage are converted normally and the unreadable
                       rest counts as ONE record
so that `written + sum(skipped.values()) == seen`, the number of input records seen. Caption
fields dropped from records that are still written (e.g. a non-UTF-8 org_caption next to a good
re_caption) are counted separately under `dropped_captions`.

Output is deterministic: records are processed and written in input order whatever the worker
count or completion order, so the same inputs and flags give byte-identical shards. With
--shards=N record i goes to shard i % N; with --records-per-shard=R (the default) shards are
consecutive runs of R records. Shards are renamed to their final `*.array_record` names only
after all are closed, so an interrupted run leaves no readable partial output.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

from PIL import Image

from openvision2 import paths as paths_lib
from openvision2.data import preprocess, records

log = logging.getLogger("make_records")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
DEFAULT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
PARQUET_IMAGE_COLUMNS = ("jpg", "png", "webp", "image")
OWN_CAPTION = "caption"
REASONS = ("empty_image", "corrupt_image", "not_an_image", "unsupported_format", "decompression_bomb", "too_small",
           "oversized_file", "missing_image", "missing_caption", "bad_caption_encoding", "caption_too_long",
           "malformed_row", "duplicate_key", "unreadable_input", "truncated_input")
# webdataset's rule: the key is the path up to the first dot of the base name.
_WDS_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_BATCH = 32  # images per worker task


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    min_side: int = 8
    max_pixels: int = preprocess.MAX_PIXELS
    max_side: int = 0
    jpeg_quality: int = 95
    formats: tuple[str, ...] = DEFAULT_FORMATS


@dataclasses.dataclass
class Item:
    """One input record as read: raw captions (str, bytes or None) not yet validated."""
    key: str | None
    image: bytes | None
    captions: dict[str, Any]
    url: str | None = None
    image_error: str | None = None  # a reason already known at read time (missing/oversized)
    dropped: tuple[str, ...] = ()  # problems of caption fields left out of the record


@dataclasses.dataclass(frozen=True)
class Skip:
    """A counted input record that cannot become an Item (damaged file, malformed line)."""
    reason: str
    detail: str = ""


# ----------------------------------------------------------------------------- image checks (workers)

def check_image(data: bytes | None, opts: ImageOptions) -> tuple[str | None, bytes | None]:
    """-> (skip reason or None, re-encoded bytes or None to keep `data` as given)."""
    if not data:
        return "empty_image", None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            return "decompression_bomb", None
        except Image.UnidentifiedImageError:
            return "not_an_image", None
        except Exception:  # noqa: BLE001  PIL raises many types on damaged headers.
            return "corrupt_image", None
        fmt, (width, height) = img.format, img.size
        img.close()
    if fmt not in opts.formats:
        return "unsupported_format", None
    if width * height > min(opts.max_pixels, preprocess.MAX_PIXELS):
        return "decompression_bomb", None
    if min(width, height) < opts.min_side:
        return "too_small", None
    try:
        # The exact decode training uses: what passes here trains.
        pixels = preprocess.decode_image(data)
    except Exception:  # noqa: BLE001
        return "corrupt_image", None
    height, width = pixels.shape[:2]
    if opts.max_side and max(height, width) > opts.max_side:
        scale = opts.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=opts.jpeg_quality)
        return None, out.getvalue()
    return None, None


def check_batch(images: list[bytes], opts: ImageOptions) -> list[tuple[str | None, bytes | None]]:
    return [check_image(data, opts) for data in images]


# ----------------------------------------------------------------------------- readers

def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else str(value)


def _clean_key(key: Any) -> str | None:
    if key is None:
        return None
    if isinstance(key, bytes):
        key = key.decode("utf-8", "backslashreplace")
    key = str(key)
    # Non-UTF-8 names arrive as surrogate escapes; msgpack needs valid UTF-8.
    key = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return key or None


def _tar_item(key: str, members: dict[str, Any]) -> Item:
    meta: dict[str, Any] = {}
    if members.get("json", _OVERSIZED) is not _OVERSIZED:
        try:
            loaded = json.loads(members["json"])
            meta = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            pass  # Unreadable metadata only loses the url / extra fields, not the sample.
    captions = {k: v for k, v in meta.items() if isinstance(v, str)}
    if members.get("txt", _OVERSIZED) is not _OVERSIZED:
        captions[OWN_CAPTION] = members["txt"]
    image, image_error = None, "missing_image"
    for ext in IMAGE_EXTS:
        if ext in members:
            image, image_error = members[ext], None
            if image is _OVERSIZED:
                image, image_error = None, "oversized_file"
            break
    return Item(_clean_key(key), image, captions, _text(meta.get("url")), image_error)


_OVERSIZED = object()


def _tail_is_end_of_archive(f, offset: int) -> bool:
    """A complete tar ends with at least one zero block after the last member (two, normally)."""
    f.seek(offset)
    total = 0
    while chunk := f.read(1 << 16):
        if chunk.count(0) != len(chunk):
            return False
        total += len(chunk)
    return total >= tarfile.BLOCKSIZE


def read_tar(path: str, max_image_bytes: int) -> Iterator[Item | Skip]:
    try:
        f = open(path, "rb")
    except OSError as e:
        yield Skip("unreadable_input", str(e))
        return
    with f:
        try:
            tf = tarfile.open(fileobj=f, mode="r:")
        except Exception as e:  # noqa: BLE001
            yield Skip("unreadable_input", f"{type(e).__name__}: {e}")
            return
        key, members, emitted = None, {}, 0
        damage = None
        try:
            for member in tf:
                if not member.isfile():
                    continue
                match = _WDS_NAME.match(member.name.removeprefix("./"))
                if not match:
                    continue
                name, ext = match.group(1), match.group(2).lower()
                if name != key:
                    if members:
                        yield _tar_item(key, members)
                        emitted += 1
                    key, members = name, {}
                if member.size > max_image_bytes:
                    members[ext] = _OVERSIZED  # not read: a bomb-sized member must not reach memory
                else:
                    members[ext] = tf.extractfile(member).read()
            if not _tail_is_end_of_archive(f, tf.offset):
                damage = "tar ends without an end-of-archive marker (truncated?)"
        except Exception as e:  # noqa: BLE001  tarfile.ReadError, EOFError, OSError on damaged data.
            damage = f"{type(e).__name__}: {e}"
        if members:  # The last sample, possibly partial if the damage hit it: judged on what was read.
            yield _tar_item(key, members)
            emitted += 1
        if damage:
            yield Skip("truncated_input" if emitted else "unreadable_input", damage)


def _column(batch, name: str) -> list[Any]:
    col = batch.column(name)
    try:
        return col.to_pylist()
    except Exception:  # noqa: BLE001  e.g. a string column holding invalid UTF-8: read raw bytes.
        import pyarrow as pa
        return col.cast(pa.binary()).to_pylist()


def read_parquet(path: str, fields: tuple[str, ...], image_column: str | None) -> Iterator[Item | Skip]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except Exception as e:  # noqa: BLE001
        yield Skip("unreadable_input", f"{type(e).__name__}: {e}")
        return
    image_col = image_column if image_column else next((c for c in PARQUET_IMAGE_COLUMNS if c in names), None)
    if image_col not in names:
        log.warning("%s has no image column (%s); every row counts as missing_image", path,
                    image_column or "/".join(PARQUET_IMAGE_COLUMNS))
        image_col = None
    caption_cols = [c for c in dict.fromkeys((OWN_CAPTION, *fields)) if c in names]
    columns = [c for c in dict.fromkeys([image_col, "key", "url", *caption_cols]) if c is not None and c in names]
    base = os.path.basename(path)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=256, columns=columns or None, use_threads=False):
            cols = {name: _column(batch, name) for name in columns}
            for i in range(batch.num_rows):
                image = cols[image_col][i] if image_col else None
                if isinstance(image, dict):  # HF datasets' {"bytes", "path"} struct
                    image = image.get("bytes")
                key = _clean_key(cols["key"][i]) if "key" in cols else None
                yield Item(key or f"{base}/{row}", image if isinstance(image, bytes) else None,
                           {c: cols[c][i] for c in caption_cols}, _text(cols["url"][i]) if "url" in cols else None,
                           None if isinstance(image, bytes) else "missing_image")
                row += 1
    except Exception as e:  # noqa: BLE001
        yield Skip("truncated_input" if row else "unreadable_input", f"{type(e).__name__}: {e}")


def read_jsonl(path: str, max_image_bytes: int) -> Iterator[Item | Skip]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        f = open(path, "rb")
    except OSError as e:
        yield Skip("unreadable_input", str(e))
        return
    lines = 0
    with f:
        try:
            for line in f:
                if not line.strip():
                    continue
                lines += 1
                try:
                    # surrogateescape keeps undecodable bytes visible, so a bad caption is caught
                    # by the caption check and a non-UTF-8 file name still opens.
                    obj = json.loads(line.decode("utf-8", "surrogateescape"))
                except ValueError:
                    obj = None
                if not isinstance(obj, dict):
                    yield Skip("malformed_row")
                    continue
                rel = obj.get("image")
                captions = {k: v for k, v in obj.items() if k not in ("image", "key", "url")}
                key = _clean_key(obj.get("key")) or _clean_key(rel)
                url = _text(obj.get("url"))
                if not isinstance(rel, str) or not rel:
                    yield Item(key or f"{os.path.basename(path)}/{lines}", None, captions, url, "missing_image")
                    continue
                image_path = os.path.join(base, rel)
                image, error = None, None
                try:
                    if os.path.getsize(image_path) > max_image_bytes:
                        error = "oversized_file"
                    else:
                        with open(image_path, "rb") as img_file:
                            image = img_file.read()
                except OSError:
                    error = "missing_image"
                yield Item(key, image, captions, url, error)
        except Exception as e:  # noqa: BLE001  an I/O error part way through the file
            yield Skip("truncated_input" if lines else "unreadable_input", f"{type(e).__name__}: {e}")


READERS = {".tar": "tar", ".parquet": "parquet", ".jsonl": "jsonl"}


def expand_inputs(spec: str) -> tuple[list[str], list[str]]:
    """-> (sorted input files we can read, other matched files that are ignored)."""
    found: set[str] = set()
    for part in (p.strip() for p in spec.split(",")):
        if part:
            found.update(p for p in glob.glob(os.path.expanduser(part)) if os.path.isfile(p))
    files = sorted(found)
    usable = [p for p in files if os.path.splitext(p)[1].lower() in READERS]
    return usable, [p for p in files if p not in usable]


def read_input(path: str, fields: tuple[str, ...], image_column: str | None, max_image_bytes: int
               ) -> Iterator[Item | Skip]:
    kind = READERS[os.path.splitext(path)[1].lower()]
    if kind == "tar":
        return read_tar(path, max_image_bytes)
    if kind == "parquet":
        return read_parquet(path, fields, image_column)
    return read_jsonl(path, max_image_bytes)


# ----------------------------------------------------------------------------- captions

def load_caption_table(spec: str, fields: tuple[str, ...]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Recaption parquet(s) -> ({key: {field: value}}, {url: {field: value}}); first row wins.

    A table that cannot be read is a fatal error: silently converting without the requested
    captions would be worse than stopping.
    """
    import pyarrow.parquet as pq
    paths = sorted({p for part in spec.split(",") if part.strip() for p in glob.glob(os.path.expanduser(part.strip()))})
    if not paths:
        raise FileNotFoundError(f"--captions={spec!r} matches no file")
    by_key: dict[str, dict] = {}
    by_url: dict[str, dict] = {}
    for path in paths:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        present = [f for f in fields if f in names]
        if not present:
            raise ValueError(f"caption table {path} has none of the caption fields {list(fields)} "
                             f"(columns: {names})")
        if "key" not in names and "url" not in names:
            raise ValueError(f"caption table {path} has neither a 'key' nor a 'url' column to join on")
        columns = [c for c in ("key", "url") if c in names] + present
        for batch in pf.iter_batches(batch_size=65536, columns=columns, use_threads=False):
            cols = {name: _column(batch, name) for name in columns}
            for i in range(batch.num_rows):
                values = {f: cols[f][i] for f in present if cols[f][i] is not None}
                if not values:
                    continue
                key = _clean_key(cols["key"][i]) if "key" in cols else None
                url = _text(cols["url"][i]) if "url" in cols else None
                if key:
                    by_key.setdefault(key, values)
                if url:
                    by_url.setdefault(url, values)
    return by_key, by_url


def select_captions(raw: dict[str, Any], fields: tuple[str, ...], max_chars: int
                    ) -> tuple[dict[str, str], list[str]]:
    """-> (usable captions in a fixed field order, problems of the unusable ones)."""
    captions: dict[str, str] = {}
    problems: list[str] = []
    for field in dict.fromkeys((OWN_CAPTION, *fields)):
        value = raw.get(field)
        if value is None:
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                problems.append("bad_caption_encoding")
                continue
        if not isinstance(value, str):
            problems.append("missing_caption")
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: undecodable bytes or bad \\u escapes
            problems.append("bad_caption_encoding")
            continue
        if not value.strip():
            problems.append("missing_caption")
            continue
        if len(value) > max_chars:
            problems.append("caption_too_long")
            continue
        captions[field] = value
    return captions, problems


def _skip_reason(problems: list[str]) -> str:
    for reason in ("bad_caption_encoding", "caption_too_long"):
        if reason in problems:
            return reason
    return "missing_caption"


# ----------------------------------------------------------------------------- output

class ShardWriter:
    """Streams records into shards under temporary names; `close()` renames them to the final
    `{prefix}-{i:05d}-of-{n:05d}.array_record` names (n known only at the end for --records-per-shard)."""

    def __init__(self, out_dir: str, prefix: str, num_shards: int | None, records_per_shard: int | None):
        from array_record.python import array_record_module
        self._module = array_record_module
        self._dir, self._prefix = out_dir, prefix
        self._num_shards, self._per_shard = num_shards, records_per_shard
        self._temps: list[str] = []
        self._writers: list[Any] = []
        self.count = 0
        if num_shards:
            for _ in range(num_shards):
                self._open()

    def _open(self) -> None:
        temp = os.path.join(self._dir, f".{self._prefix}-{len(self._temps):05d}{records.SHARD_SUFFIX}.tmp{os.getpid()}")
        self._temps.append(temp)
        self._writers.append(self._module.ArrayRecordWriter(temp, "group_size:1"))

    def write(self, record: bytes) -> None:
        if self._num_shards:
            self._writers[self.count % self._num_shards].write(record)
        else:
            if self.count % self._per_shard == 0:
                if self._writers:
                    self._writers[-1].close()
                self._open()
            self._writers[-1].write(record)
        self.count += 1

    def close(self) -> list[str]:
        for w in self._writers:
            w.close()
        n = len(self._temps)
        finals = [os.path.join(self._dir, records.shard_name(self._prefix, i, n)) for i in range(n)]
        for temp, final in zip(self._temps, finals):
            os.replace(temp, final)
        return finals

    def abort(self) -> None:
        for w, temp in zip(self._writers, self._temps):
            try:
                w.close()
            except Exception:  # noqa: BLE001  already closed
                pass
            if os.path.exists(temp):
                os.remove(temp)


def _prepare_output(out_dir: str, prefix: str, overwrite: bool) -> None:
    paths_lib.makedirs(out_dir)
    existing = paths_lib.glob(paths_lib.join(out_dir, f"*{records.SHARD_SUFFIX}"))
    pattern = re.escape(prefix) + r"-\d{5}-of-\d{5}" + re.escape(records.SHARD_SUFFIX)
    ours = [p for p in existing if re.fullmatch(pattern, paths_lib.basename(p))]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {len(existing)} *{records.SHARD_SUFFIX} shards; training "
                              "reads every shard there. Use another --output, or --overwrite to replace "
                              f"'{prefix}-*' shards")
    if len(ours) != len(existing):
        raise FileExistsError(f"{out_dir} holds shards not named '{prefix}-*'; refusing to mix outputs")
    for p in ours:
        paths_lib.remove(p)


# ----------------------------------------------------------------------------- driver

class _Checker:
    """Runs check_batch in input order, in-process (workers=1) or on a spawn pool with bounded
    look-ahead. Results are consumed strictly in submission order, so output never depends on
    which worker finishes first. A worker killed by a decoder crash is isolated by re-running its
    batch one image at a time on a fresh pool; the image that kills it is counted corrupt_image."""

    def __init__(self, workers: int, opts: ImageOptions):
        self._opts, self._workers = opts, workers
        self._pool = None
        self._pending: collections.deque = collections.deque()
        if workers > 1:
            self._pool = self._new_pool()

    def _new_pool(self):
        return concurrent.futures.ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, items: list[Item]) -> Iterator[tuple[Item, tuple]]:
        """Queues a batch; yields finished (item, result) pairs that are ready in order."""
        if self._pool is None:
            yield from zip(items, check_batch([it.image for it in items], self._opts))
            return
        self._pending.append((items, self._submit(items)))
        while len(self._pending) > 4 * self._workers:
            yield from self._pop()

    def _submit(self, items: list[Item]) -> concurrent.futures.Future:
        try:
            return self._pool.submit(check_batch, [it.image for it in items], self._opts)
        except concurrent.futures.process.BrokenProcessPool as e:  # died since the last result
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_exception(e)
            return future

    def drain(self) -> Iterator[tuple[Item, tuple]]:
        while self._pending:
            yield from self._pop()

    def _pop(self) -> Iterator[tuple[Item, tuple]]:
        items, future = self._pending.popleft()
        try:
            results = future.result()
        except concurrent.futures.process.BrokenProcessPool:
            results = self._isolate(items)
        yield from zip(items, results)

    def _isolate(self, items: list[Item]) -> list[tuple]:
        log.warning("an image worker died; re-checking its batch one image at a time")
        self._pool.shutdown(wait=True, cancel_futures=True)
        results = []
        self._pool = self._new_pool()
        for item in items:
            try:
                results.append(self._pool.submit(check_batch, [item.image], self._opts).result()[0])
            except concurrent.futures.process.BrokenProcessPool:
                results.append(("corrupt_image", None))
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = self._new_pool()
        # Work queued on the dead pool is lost: resubmit it on the new one, still in order.
        self._pending = collections.deque((its, self._submit(its)) for its, _ in self._pending)
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def convert(inputs: str, output: str, *, captions: str | None = None, caption_fields: tuple[str, ...] = ("re_caption",),
            workers: int = 1, shards: int | None = None, records_per_shard: int | None = None,
            image_options: ImageOptions = ImageOptions(), max_caption_chars: int = 1_000_000,
            max_image_bytes: int = 64 << 20, image_column: str | None = None, prefix: str = "records",
            overwrite: bool = False, progress: bool = True) -> dict:
    """Converts `inputs` into shards under `output`; returns (and writes) the summary."""
    start = time.time()
    caption_fields = tuple(dict.fromkeys(f.strip() for f in caption_fields if f.strip()))
    if shards is not None and records_per_shard is not None:
        raise ValueError("give at most one of --shards and --records-per-shard")
    if shards is not None and shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    if records_per_shard is None and shards is None:
        records_per_shard = 10_000
    if records_per_shard is not None and records_per_shard < 1:
        raise ValueError(f"--records-per-shard must be >= 1, got {records_per_shard}")
    paths, ignored = expand_inputs(inputs)
    if not paths:
        raise FileNotFoundError(f"--input={inputs!r} matches no .tar, .parquet or .jsonl file")
    for p in ignored:
        log.warning("ignoring %s: not a .tar, .parquet or .jsonl file", p)
    by_key, by_url = load_caption_table(captions, caption_fields) if captions else ({}, {})
    _prepare_output(output, prefix, overwrite)
    # ArrayRecord's writer needs a local file: shards for cloud storage are written to a local
    # staging directory, then uploaded, summary.json last (so its presence means the set is whole).
    destination, staging = output, None
    if paths_lib.is_remote(output):
        staging = tempfile.mkdtemp(prefix="openvision2-records-")
        output = staging

    skipped: collections.Counter = collections.Counter()
    dropped: collections.Counter = collections.Counter()
    joined: collections.Counter = collections.Counter()
    seen_keys: set[str] = set()
    stats = {"seen": 0, "reencoded": 0}
    writer = ShardWriter(output, prefix, shards, records_per_shard)
    checker = _Checker(max(1, workers), image_options)

    from tqdm import tqdm
    bar = tqdm(unit="rec", desc="make_records", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def finish(item: Item, result: tuple) -> None:
        reason, reencoded = result
        if reason is None and item.key in seen_keys:
            reason = "duplicate_key"
        if reason is not None:
            skipped[reason] += 1
            return
        seen_keys.add(item.key)
        dropped.update(item.dropped)
        if reencoded is not None:
            stats["reencoded"] += 1
        writer.write(records.encode_record(item.key, reencoded or item.image, item.captions))

    try:
        batch: list[Item] = []
        for path in paths:
            for item in read_input(path, caption_fields, image_column, max_image_bytes):
                stats["seen"] += 1
                bar.update()
                if isinstance(item, Skip):
                    skipped[item.reason] += 1
                    if item.reason in ("unreadable_input", "truncated_input"):
                        log.warning("%s: %s (%s)", path, item.reason, item.detail)
                    continue
                raw = dict(item.captions)
                if by_key or by_url:
                    extra = by_key.get(item.key) if item.key else None
                    how = "by_key"
                    if extra is None and item.url:
                        extra, how = by_url.get(item.url), "by_url"
                    joined[how if extra is not None else "unmatched"] += 1
                    raw.update(extra or {})
                item.captions, problems = select_captions(raw, caption_fields, max_caption_chars)
                if not item.captions:
                    skipped[_skip_reason(problems)] += 1
                    continue
                item.dropped = tuple(problems)
                if item.image_error:
                    skipped[item.image_error] += 1
                    continue
                batch.append(item)
                if len(batch) == _BATCH:
                    for done in checker.submit(batch):
                        finish(*done)
                    batch = []
                    bar.set_postfix(written=writer.count, skipped=sum(skipped.values()), refresh=False)
        if batch:
            for done in checker.submit(batch):
                finish(*done)
        for done in checker.drain():
            finish(*done)
        shard_paths = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        checker.close()
        bar.close()

    seconds = time.time() - start
    summary = {
            "written": writer.count,
            "skipped": dict(sorted(skipped.items())),
            "shards": len(shard_paths),
            "seen": stats["seen"],
            "inputs": len(paths),
            "ignored_inputs": [os.path.basename(p) for p in ignored],
            "shard_files": [os.path.basename(p) for p in shard_paths],
            "caption_fields": [OWN_CAPTION, *[f for f in caption_fields if f != OWN_CAPTION]],
            "caption_join": dict(sorted(joined.items())),
            "dropped_captions": dict(sorted(dropped.items())),
            "reencoded": stats["reencoded"],
            "seconds": round(seconds, 3),
            "records_per_s": round(stats["seen"] / seconds, 1) if seconds > 0 else None,
    }
    assert summary["written"] + sum(skipped.values()) == summary["seen"], summary
    if staging is not None:
        try:
            for shard in shard_paths:
                paths_lib.copy(shard, paths_lib.join(destination, os.path.basename(shard)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    paths_lib.write_text(paths_lib.join(destination, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="glob(s) of .tar/.parquet/.jsonl files, comma-separated")
    p.add_argument("--output", required=True, help="directory for the shards and summary.json (local or gs://; "
                                                  "for gs:// the shards are staged on local disk, then uploaded)")
    p.add_argument("--captions", help="recaption parquet glob(s), joined by `key`, else by `url`")
    p.add_argument("--caption-field", action="append", default=None,
                   help="caption field(s) to keep besides `caption`; repeatable or comma-separated "
                        "(default re_caption)")
    p.add_argument("--workers", type=int, default=1, help="image-checking processes (spawned)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shards", type=int, help="exactly N shards, record i in shard i %% N")
    g.add_argument("--records-per-shard", type=int, help="consecutive shards of R records (default 10000)")
    p.add_argument("--prefix", default="records", help="shard file name prefix")
    p.add_argument("--max-side", type=int, default=0, help="downscale + re-encode (JPEG) images whose longer side "
                                                           "exceeds N; 0 keeps every image's bytes as given")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of re-encoded images")
    p.add_argument("--min-side", type=int, default=8, help="skip images whose shorter side is below this")
    p.add_argument("--max-pixels", type=int, default=preprocess.MAX_PIXELS,
                   help="skip images with more pixels (capped at training's MAX_PIXELS)")
    p.add_argument("--max-image-bytes", type=int, default=64 << 20, help="skip encoded images larger than this")
    p.add_argument("--max-caption-chars", type=int, default=1_000_000,
                   help="drop captions longer than this (long ones are truncated at tokenisation, not here)")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS), help="accepted PIL image formats")
    p.add_argument("--image-column", help="parquet image-bytes column (default: jpg, png, webp or image)")
    p.add_argument("--overwrite", action="store_true", help="replace existing '<prefix>-*' shards in --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    fields = tuple(f for spec in (args.caption_field or ["re_caption"]) for f in spec.split(",") if f.strip())
    opts = ImageOptions(min_side=args.min_side, max_pixels=args.max_pixels, max_side=args.max_side,
                        jpeg_quality=args.jpeg_quality,
                        formats=tuple(f.strip().upper() for f in args.formats.split(",") if f.strip()))
    summary = convert(args.input, args.output, captions=args.captions, caption_fields=fields, workers=args.workers,
                      shards=args.shards, records_per_shard=args.records_per_shard, image_options=opts,
                      max_caption_chars=args.max_caption_chars, max_image_bytes=args.max_image_bytes,
                      image_column=args.image_column, prefix=args.prefix, overwrite=args.overwrite,
                      progress=not args.no_progress)
    print(json.dumps({k: summary[k] for k in ("written", "skipped", "shards", "seen", "records_per_s")}))
    return 0


def run():
    """The `openvision2-make-records` command."""
    sys.exit(main())


if __name__ == "__main__":
    run()
