"""Grain input pipeline in which the data position is a pure function of the training step.

Train element `g = step * global_batch + j` (row j of the global batch at `step`) is record
`shuffled[g]` of a per-epoch global shuffle (grain `shuffle().repeat()`: a new O(1)-memory
index permutation every epoch), decoded and augmented with an rng seeded by (seed, g) only. So the global batch at a step does not depend on how it is split across hosts or on
the worker count, and resuming needs nothing but the step: there is no iterator state.

Each grain element is one host batch (keyed by its step), so multiprocessing workers each
build whole batches and grain interleaves them back in step order.

Several sources (`cfg.data.sources = "/data/a:0.7,/data/b:0.3"`) are mixed per element: g
draws its source k from a hash of (seed, g) against the normalised cumulative weights, and
then reads `shuffled_k[g]` of that source's own per-epoch shuffle. Both are pure functions
of g, so every property above still holds and memory stays O(1). The price is that a source
is not read in strict epochs: source k (N_k records) is read only at the positions g that
chose it, so each N_k-element epoch of its shuffle reads each of its records with probability
weight_k. Over G elements a record is read weight_k * G / N_k times on average, the same rate
as an epoch-based mixer, but records get revisited at a rate set by the weight rather than
exactly once per pass (some are skipped in one epoch, some are read in consecutive ones).

The caption is chosen by `cfg.data.caption_mode` ("field", "random_field",
"random_sentence"; see `CaptionPicker`) with its own rng from (seed, g), independent of the
augmentation rng. Eval always reads the first listed caption field, unaugmented.

The pipeline reads its own config block (`cfg.data`) and is handed the rest of what defines a
stream as a `Stream`: the seed, the resolution, the caption length and the `Views` (extra
per-example fields) that the recipe being trained asks for. It knows nothing of recipes.
"""

from __future__ import annotations

import dataclasses
import bisect
import math
import os
import re
import sys
from collections.abc import Iterator

import grain
import numpy as np
from absl import flags, logging

from openvision2.data import preprocess, records, shapes, tfds_source
from openvision2.data.tokenizer import Tokenizer

# Consecutive bad records tolerated for one row before we conclude the data is broken.
MAX_BAD_PER_ROW = 16
_MASK64 = (1 << 64) - 1
# Salts that keep the source choice and the caption rng independent of the bad-record probe
# (which hashes (seed, g, attempt) with small attempts) and of the augmentation rng.
_SOURCE_SALT = 0x534F55524345  # "SOURCE"
_CAPTION_SALT = 0x43415054  # "CAPT"
_VIEWS_SALT = 0x56494557  # "VIEW": the contrastive text and region draws
CAPTION_MODES = ("field", "random_field", "random_sentence")
# A sentence ends at . ! or ? (possibly repeated, possibly followed by a closing quote or
# bracket) followed by whitespace; so "3.5" and "a.b" do not split.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


@dataclasses.dataclass(frozen=True)
class Augment:
    image_size: int
    augment: str
    area_min: float
    area_max: float
    color_jitter: float
    color_jitter_prob: float
    grayscale_prob: float

    @classmethod
    def from_data(cls, data, image_size: int) -> Augment:
        return cls(image_size, data.augment, data.area_min, data.area_max, data.color_jitter, data.color_jitter_prob,
                   data.grayscale_prob)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """(augmented image, the crop of the source it shows)."""
        return preprocess.train_transform_with_box(
            img, self.image_size, rng, augment=self.augment, area_min=self.area_min, area_max=self.area_max,
            color_jitter=self.color_jitter, color_jitter_prob=self.color_jitter_prob,
            grayscale_prob=self.grayscale_prob)


def mix64(*values: int) -> int:
    """A fixed 64-bit hash (splitmix64 finaliser chained over the inputs), stable across
    processes and Python versions, unlike `hash()`."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, each keeping its terminal punctuation; pieces without any letter
    or digit (stray punctuation) are dropped."""
    return [p.strip() for p in _SENTENCE_END.split(text.strip()) if any(c.isalnum() for c in p)]


def caption_fields(spec: str) -> tuple[str, ...]:
    """`cfg.data.caption_field` ("re_caption" or "re_caption,caption") -> the listed fields."""
    fields = tuple(dict.fromkeys(f.strip() for f in spec.split(",") if f.strip()))
    if not fields:
        raise ValueError(f"cfg.data.caption_field={spec!r} names no caption field")
    return fields


@dataclasses.dataclass(frozen=True)
class CaptionPicker:
    """Picks a record's caption text.

    "field": the first listed field (missing -> bad record).
    "random_field": uniformly one of the listed fields that is present and non-blank
        (none -> bad record).
    "random_sentence": one sentence, uniformly, of the first listed field's text, terminal
        punctuation kept (OpenVision v1 style); a text with no sentence is used whole
        (missing field -> bad record).
    The random modes draw from the rng given, which the train pipeline derives from (seed, g).
    """
    mode: str
    fields: tuple[str, ...]

    def __post_init__(self):
        if self.mode not in CAPTION_MODES:
            raise ValueError(f"cfg.data.caption_mode={self.mode!r}; expected one of {CAPTION_MODES}")
        if not self.fields:
            raise ValueError("CaptionPicker needs at least one caption field")

    @classmethod
    def from_data(cls, data, *, train: bool = True) -> CaptionPicker:
        fields = caption_fields(data.caption_field)
        mode = data.caption_mode
        if not train:  # eval: always the first listed field, deterministically
            CaptionPicker(mode, fields)  # still reject an unknown mode
            return cls("field", fields[:1])
        return cls(mode, fields)

    @property
    def random(self) -> bool:
        return self.mode != "field"

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> str:
        captions = record["captions"]
        if self.mode == "random_field":
            present = [f for f in self.fields if captions.get(f, "").strip()]
            if not present:
                raise ValueError(f"record {record['key']!r} has none of the caption fields {list(self.fields)} "
                                 f"non-empty (has {sorted(captions)})")
            return captions[present[int(rng.integers(len(present)))]]
        text = captions.get(self.fields[0])
        if text is None:
            raise ValueError(f"record {record['key']!r} has no caption field {self.fields[0]!r} "
                             f"(has {sorted(captions)})")
        if self.mode == "random_sentence":
            sentences = split_sentences(text)
            if sentences:
                return sentences[int(rng.integers(len(sentences)))]
            return text.strip()
        return text


@dataclasses.dataclass(frozen=True)
class Views:
    """What an example carries beyond its image and caption; the recipe being trained says:

    - `text_con`, the contrastive text tower's input: the caption itself (`"same"`) or a pick of
      its own from the same record's caption fields (`"field"`, `"random_sentence"`), tokenised
      to `contrastive_len`;
    - `box` + `region_text`, one region of the record (MM-GEM's region stage): its box mapped
      through the same crop as the image, in [0, 1] of the output, and its caption. Training
      draws uniformly among the regions that stay at least `min_visible` visible; eval takes
      the first such. A record with none is a bad record (replaced and counted).
    """
    contrastive: str = ""  # "" = no contrastive text
    contrastive_fields: tuple[str, ...] = ()
    contrastive_len: int = 0
    regions: bool = False
    min_visible: float = 0.5

    def __post_init__(self):
        if self.contrastive not in ("", "same"):
            try:
                CaptionPicker(self.contrastive, self.contrastive_fields)
            except ValueError as e:
                raise ValueError(f"cfg.data.contrastive_caption_mode={self.contrastive!r}: {e} (or 'same')") from None

    def for_eval(self) -> Views:
        """Eval is deterministic: the contrastive text is the eval caption itself."""
        return dataclasses.replace(self, contrastive="same") if self.contrastive else self

    def fields(self, max_len: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Per-example fields of a batch, name -> (shape, dtype), besides the image."""
        out = {"text": ((max_len,), "int32")}
        if self.contrastive:
            out["text_con"] = ((self.contrastive_len,), "int32")
        if self.regions:
            out.update(box=((4,), "float32"), region_text=((max_len,), "int32"))
        return out

    def text_lengths(self, max_len: int) -> dict[str, int]:
        """Tokenised fields and their lengths, "text" included."""
        return {k: shape[0] for k, (shape, dtype) in self.fields(max_len).items() if dtype == "int32"}

    def extras(self, record: dict | None, caption: str, crop, rng: np.random.Generator | None) -> dict:
        """The extra fields of one example; `rng` None = deterministic (eval)."""
        out = {}
        if self.contrastive == "same":
            out["text_con"] = caption
        elif self.contrastive:
            out["text_con"] = CaptionPicker(self.contrastive, self.contrastive_fields)(record, rng)
        if self.regions:
            regions = (record or {}).get("regions") or []
            if not regions:
                raise ValueError(f"record {(record or {}).get('key')!r} has no regions; a region stage needs "
                                 "records with 'regions' (box + caption)")
            boxes, visible = preprocess.map_boxes([r["box"] for r in regions], crop, 1)
            usable = np.flatnonzero(visible >= self.min_visible)
            if not usable.size:
                raise ValueError(f"record {record.get('key')!r}: no region stays {self.min_visible:.0%} visible "
                                 "after the crop")
            i = int(usable[0] if rng is None else usable[int(rng.integers(usable.size))])
            out["box"], out["region_text"] = boxes[i], regions[i]["caption"]
        return out


def load_example(raw: bytes, caption: str | CaptionPicker,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, str]:
    """Record bytes -> (uint8 image, caption); ValueError if any part is unusable.

    `caption` is a field name (used as is) or a CaptionPicker (random modes need `rng`)."""
    picker = caption if isinstance(caption, CaptionPicker) else CaptionPicker("field", (caption,))
    return example_from_record(records.decode_record(raw), picker, rng)


def example_from_record(record: dict, picker: CaptionPicker, rng: np.random.Generator | None = None
                        ) -> tuple[np.ndarray, str]:
    """A decoded record -> (uint8 image, its caption as `picker` chooses)."""
    text = picker(record, rng)
    return preprocess.decode_image(record["image"]), text


def _warn_bad(where: str, index: int, error: Exception) -> None:
    logging.log_first_n(logging.WARNING, "Skipping bad record (%s %d): %s", 20, where, index, error)


def _check_host_slice(global_batch: int, host_batch: int, host_offset: int) -> None:
    if host_batch < 1 or host_offset < 0 or host_offset + host_batch > global_batch:
        raise ValueError(f"host slice [{host_offset}, {host_offset + host_batch}) is not inside a global batch "
                         f"of {global_batch}")


@dataclasses.dataclass(frozen=True)
class Stream:
    """What defines an example stream besides the data block: handed in by the trainer."""
    seed: int  # train streams: element g depends on (seed, g) only; eval streams ignore it
    image_size: int
    max_len: int  # caption tokens, `[bos]` and `[eos]` included
    views: Views = Views()

    def batch_fields(self, batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every field of a train batch of `batch` rows, name -> (shape, dtype)."""
        fields = {"image": ((self.image_size, self.image_size, 3), "uint8"), **self.views.fields(self.max_len)}
        return {**{k: ((batch, *shape), dtype) for k, (shape, dtype) in fields.items()},
                "bad_records": ((batch,), "int32")}


class TrainBatch(grain.transforms.Map):
    """step -> this host's rows of the global batch at that step.

    `sources` is [(shard paths, weight), ...]; weights need not be normalised. Element g
    reads source `source_index(g)` at position g of that source's own shuffled stream.
    """

    def __init__(self, sources: list[tuple[list[str], float]], *, seed: int, caption: CaptionPicker,
                 augment: Augment, tokenizer: Tokenizer, max_len: int, global_batch: int, host_batch: int,
                 host_offset: int, views: Views = Views()):
        if not sources:
            raise ValueError("TrainBatch needs at least one source")
        self._sources = [grain.sources.ArrayRecordDataSource(list(paths)) for paths, _ in sources]
        for (paths, _), src in zip(sources, self._sources):
            if len(src) == 0:
                raise ValueError(f"train source {paths} holds no records")
        # grain reseeds the shuffle each epoch (seed + epoch); seeds must fit in 32 bits. Source 0
        # keeps the plain seed (so one source reads exactly as before); the others get hashed
        # seeds so equal-sized sources are not shuffled alike.
        seeds = [seed % 2**32] + [mix64(seed, k, _SOURCE_SALT) % 2**32 for k in range(1, len(sources))]
        self._shuffled = [grain.MapDataset.source(src).shuffle(seed=s).repeat()
                          for src, s in zip(self._sources, seeds)]
        weights = [float(w) for _, w in sources]
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"source weights must be positive, got {weights}")
        total = sum(weights)
        # Upper bounds of sources 0..K-2 in [0, 1); u >= the last bound picks source K-1.
        self._bounds, acc = [], 0.0
        for w in weights[:-1]:
            acc += w / total
            self._bounds.append(acc)
        self._seed = seed
        self._caption = caption
        self._views = views
        self._augment = augment
        self._tokenizer = tokenizer
        self._max_len = max_len
        self._global_batch, self._host_batch, self._host_offset = global_batch, host_batch, host_offset

    def source_index(self, g: int) -> int:
        """The source of global element g: a hash of (seed, g) against the cumulative weights."""
        if not self._bounds:
            return 0
        u = (mix64(self._seed, g, _SOURCE_SALT) >> 11) / float(1 << 53)  # uniform in [0, 1)
        return bisect.bisect_right(self._bounds, u)

    def example(self, g: int) -> tuple[dict, int]:
        """Row for global element g: ({"image", "text", + views}, number of bad records skipped)."""
        k = self.source_index(g)
        source = self._sources[k]
        for attempt in range(MAX_BAD_PER_ROW):
            # A bad record is replaced by a pseudo-random one of the same source chosen from
            # (seed, g, attempt), so the replacement is the same on every host, worker count and resume.
            if attempt == 0:
                raw = self._shuffled[k][g]
            else:
                raw = source[mix64(self._seed, g, attempt) % len(source)]
            try:
                # Fresh rngs per attempt: caption choice, views and augmentation depend on (seed, g) alone.
                caption_rng = np.random.default_rng([self._seed, g, _CAPTION_SALT]) if self._caption.random else None
                record = records.decode_record(raw)
                img, text = example_from_record(record, self._caption, caption_rng)
                image, crop = self._augment(img, np.random.default_rng([self._seed, g]))
                extras = self._views.extras(record, text, crop, np.random.default_rng([self._seed, g, _VIEWS_SALT]))
                return {"image": image, "text": text, **extras}, attempt
            except ValueError as e:
                _warn_bad("train element", g, e)
        raise RuntimeError(f"train element {g}: {MAX_BAD_PER_ROW} records in a row were unreadable; "
                           f"the dataset looks corrupt or cfg.data.caption_field={','.join(self._caption.fields)!r} "
                           f"(caption_mode={self._caption.mode!r}) is wrong (see the warnings above)")

    def map(self, step: int) -> dict[str, np.ndarray]:
        first = step * self._global_batch + self._host_offset
        rows = [self.example(g) for g in range(first, first + self._host_batch)]
        return {**_collate([r for r, _ in rows], self._tokenizer, self._views.text_lengths(self._max_len)),
                "bad_records": np.array([bad for _, bad in rows], dtype=np.int32)}


def _collate(rows: list[dict], tokenizer: Tokenizer, text_lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """Rows of per-example fields -> batch arrays; text fields are tokenised to their lengths."""
    return {key: tokenizer.encode([r[key] for r in rows], text_lengths[key]) if key in text_lengths
            else np.stack([r[key] for r in rows]) for key in rows[0]}


class RecordEvalSource:
    """Our ArrayRecord shards as an eval source: (image, caption of the first field)."""

    def __init__(self, paths: list[str], caption: CaptionPicker):
        self.paths = paths
        self._source = grain.sources.ArrayRecordDataSource(paths)
        self._caption = caption

    def __len__(self) -> int:
        return len(self._source)

    def example(self, index: int) -> tuple[np.ndarray, str]:
        return self.example_with_record(index)[:2]

    def example_with_record(self, index: int) -> tuple[np.ndarray, str, dict]:
        """(image, caption, the whole record: regions included), decoded once, for the views that
        need more than image + caption."""
        record = records.decode_record(self._source[index])
        return (*example_from_record(record, self._caption), record)

    def describe(self) -> str:
        return f"{len(self.paths)} ArrayRecord shards"


class EvalBatch(grain.transforms.Map):
    """Eval batch index -> this host's rows, in dataset order, padded at the end with copies."""

    def __init__(self, source, *, num_examples: int, image_size: int,
                 tokenizer: Tokenizer, max_len: int, global_batch: int, host_batch: int, host_offset: int,
                 views: Views = Views()):
        if views.regions and not hasattr(source, "example_with_record"):
            raise ValueError(f"a region stage evaluates on region records, but the eval source is "
                             f"{source.describe()}; set --config.data.eval_path to ArrayRecord shards with regions")
        self._source = source
        self._views = views
        self._num_examples = num_examples
        self._image_size = image_size
        self._tokenizer = tokenizer
        self._max_len = max_len
        self._global_batch, self._host_batch, self._host_offset = global_batch, host_batch, host_offset

    def example(self, g: int) -> tuple[dict, bool, int]:
        """(row, valid, bad); a bad eval record becomes an invalid row, not a crash."""
        valid = g < self._num_examples
        index = g % self._num_examples
        try:
            if self._views.regions:
                img, text, record = self._source.example_with_record(index)
            else:
                (img, text), record = self._source.example(index), None
            crop = preprocess.eval_crop_box(*img.shape[:2], self._image_size)
            row = {"image": preprocess.eval_transform(img, self._image_size), "text": text,
                   **self._views.extras(record, text, crop, None)}
            return row, valid, 0
        except ValueError as e:
            _warn_bad("eval element", g, e)
            return self._blank(), False, 1

    def _blank(self) -> dict:
        row = {"image": np.zeros((self._image_size, self._image_size, 3), np.uint8), "text": ""}
        if self._views.contrastive:
            row["text_con"] = ""
        if self._views.regions:
            row.update(box=np.array([0.0, 0.0, 1.0, 1.0], np.float32), region_text="")
        return row

    def map(self, batch_index: int) -> dict[str, np.ndarray]:
        first = batch_index * self._global_batch + self._host_offset
        rows = [self.example(g) for g in range(first, first + self._host_batch)]
        return {**_collate([r for r, _, _ in rows], self._tokenizer, self._views.text_lengths(self._max_len)),
                "valid": np.array([v for _, v, _ in rows], dtype=bool),
                "bad_records": np.array([bad for _, _, bad in rows], dtype=np.int32)}


def _shapes_dir(data) -> str:
    s = data.shapes
    if s.dir:
        return s.dir
    # Every generation parameter is in the name, so configs that differ never fight over one dir.
    name = (f"shapes-v{shapes.FORMAT_VERSION}-s{s.image_size}"
            f"-train{s.num_train}-seed{s.seed}-eval{s.num_eval}-seed{s.eval_seed}")
    return os.path.join(shapes.default_cache_dir(), name)


def parse_sources(spec: str) -> list[tuple[str, float]]:
    """`"/data/a:0.7,/data/b:0.3"` -> [("/data/a", 0.7), ("/data/b", 0.3)] with weights normalised.

    Each comma-separated item is `<dir or glob>:<weight>` (split at its last colon); weights
    must be positive and finite."""
    out = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        where, sep, weight = item.rpartition(":")
        where = where.strip()
        if not sep or not where:
            raise ValueError(f"cfg.data.sources item {item!r} is not <dir or glob>:<weight>")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"cfg.data.sources item {item!r}: weight {weight!r} is not a number") from None
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"cfg.data.sources item {item!r}: weight must be positive and finite")
        out.append((where, w))
    if not out:
        raise ValueError(f"cfg.data.sources={spec!r} names no source")
    total = sum(w for _, w in out)
    return [(where, w / total) for where, w in out]


def train_sources(data) -> list[tuple[str, float, list[str]]]:
    """[(spec, normalised weight, shard paths), ...]: `data.sources` if set, else the single
    source `data.path` (or the synthetic shapes) with weight 1."""
    spec = data.sources
    if spec:
        if data.path:
            raise ValueError("set cfg.data.path or cfg.data.sources, not both")
        return [(where, w, records.resolve_paths(where)) for where, w in parse_sources(spec)]
    return [(data.path or "<synthetic shapes>", 1.0, train_paths(data))]


def train_paths(data) -> list[str]:
    """Shards of the single train set (`data.path`, else the synthetic shapes); with
    `data.sources` set, the shards of every source."""
    if data.sources:
        return sorted({p for _, _, paths in train_sources(data) for p in paths})
    if data.path:
        return records.resolve_paths(data.path)
    s = data.shapes
    return shapes.ensure_dataset(_shapes_dir(data), "train", s.num_train, s.seed, s.image_size)


def eval_source(data):
    """The eval set (RecordEvalSource or TfdsSource), or None when a real train set is
    configured without one."""
    spec = data.eval_path
    if spec and tfds_source.is_tfds(spec):
        return tfds_source.TfdsSource(spec, split=data.tfds_split, data_dir=data.tfds_data_dir,
                                      image_key=data.tfds_image_key,
                                      caption_key=data.tfds_caption_key or caption_fields(data.caption_field)[0])
    caption = CaptionPicker.from_data(data, train=False)
    if spec:
        return RecordEvalSource(records.resolve_paths(spec), caption)
    if data.path or data.sources:
        return None
    s = data.shapes
    if s.eval_seed == s.seed:
        raise ValueError("cfg.data.shapes.eval_seed must differ from cfg.data.shapes.seed so eval images are unseen")
    return RecordEvalSource(shapes.ensure_dataset(_shapes_dir(data), "eval", s.num_eval, s.eval_seed, s.image_size),
                            caption)


def _iterate(ds: grain.MapDataset, workers: int, prefetch: int) -> Iterator[dict[str, np.ndarray]]:
    # One background thread builds batches ahead even with no worker processes, so decoding
    # overlaps the device step; a second thread would only fight the main thread for 2 cores.
    read = grain.ReadOptions(num_threads=1 if prefetch > 0 else 0, prefetch_buffer_size=prefetch)
    it_ds = ds.to_iter_dataset(read)
    if workers > 0:
        # grain reads its absl flags when it starts workers; outside an absl app (tests,
        # notebooks) nobody parsed them, so accept their defaults instead of crashing.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                               per_worker_buffer_size=max(1, prefetch)))
    it = iter(it_ds)
    try:
        yield from it
    finally:
        it.close()


def train_loader(data, stream: Stream, tokenizer: Tokenizer, *, global_batch: int, host_batch: int,
                 host_offset: int) -> TrainBatch:
    """The step -> host batch map that `train_batches` runs (also handy to inspect single rows)."""
    _check_host_slice(global_batch, host_batch, host_offset)
    return TrainBatch(
        [(paths, w) for _, w, paths in train_sources(data)], seed=stream.seed, caption=CaptionPicker.from_data(data),
        augment=Augment.from_data(data, stream.image_size), tokenizer=tokenizer, max_len=stream.max_len,
        global_batch=global_batch, host_batch=host_batch, host_offset=host_offset, views=stream.views)


def train_batches(data, stream: Stream, tokenizer: Tokenizer, *, start_step: int, global_batch: int, host_batch: int,
                  host_offset: int) -> Iterator[dict[str, np.ndarray]]:
    """Infinite iterator of host batches for steps start_step, start_step + 1, ...

    Each batch: "image" uint8 [host_batch, S, S, 3], "text" int32 [host_batch, max_len], the
    views' fields, and "bad_records" int32 [host_batch] (bad records skipped to fill each row).
    """
    loader = train_loader(data, stream, tokenizer, global_batch=global_batch, host_batch=host_batch,
                          host_offset=host_offset)
    steps = grain.MapDataset.range(start_step, sys.maxsize).map(loader)
    return _iterate(steps, data.workers, data.prefetch)


def num_eval_examples(data, source) -> int:
    available = len(source)
    return min(data.num_eval, available) if data.num_eval > 0 else available


def eval_batches(data, stream: Stream, tokenizer: Tokenizer, *, global_batch: int, host_batch: int, host_offset: int
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Finite iterator over the eval set in order (empty if there is none).

    Each batch has "image", "text", "bad_records" and the views' fields as in training plus
    "valid" bool [host_batch]: False for the copies padding the last global batch and for bad
    records. The views are the eval ones (`Views.for_eval`).
    """
    _check_host_slice(global_batch, host_batch, host_offset)
    source = eval_source(data)
    if source is None:
        return iter(())
    num = num_eval_examples(data, source)
    if num == 0:
        return iter(())
    loader = EvalBatch(
        source, num_examples=num, image_size=stream.image_size,
        tokenizer=tokenizer, max_len=stream.max_len, global_batch=global_batch, host_batch=host_batch,
        host_offset=host_offset, views=stream.views.for_eval())
    batches = grain.MapDataset.range(math.ceil(num / global_batch)).map(loader)
    return _iterate(batches, data.workers, data.prefetch)


def describe_sources(data) -> dict:
    """Where the data comes from, for the run log."""
    sources = train_sources(data)
    counts = [len(grain.sources.ArrayRecordDataSource(paths)) for _, _, paths in sources]
    train = sorted({p for _, _, paths in sources for p in paths})
    info = {
        "synthetic_shapes": not (data.path or data.sources),
        "caption_field": data.caption_field,
        "caption_mode": data.caption_mode,
        "train": {
            "paths": train,
            "num_records": sum(counts),
            # The mix: each element draws its source with probability `weight`.
            "sources": [{"spec": spec, "weight": w, "paths": paths, "num_records": n}
                        for (spec, w, paths), n in zip(sources, counts)],
        },
        "eval": None,
    }
    evals = eval_source(data)
    if evals is not None:
        info["eval"] = {"source": evals.describe(), "paths": getattr(evals, "paths", []), "num_records": len(evals),
                        "num_used": num_eval_examples(data, evals),
                        "caption_field": caption_fields(data.caption_field)[0]}
    return info
