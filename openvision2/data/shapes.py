"""Synthetic "shapes" captioning set: the demo data that ships with the code (nothing to download).

Each image shows 1-3 coloured circles/squares/triangles on a dark background; the caption names
each shape's colour and kind from left to right, and every shape is also a region (its box and
its own caption, e.g. "a red circle.") for the region-level recipes. Shapes never overlap horizontally, so the
left-to-right order is unambiguous and the caption is a function of the pixels. Everything is a
pure function of (seed, index), so every host regenerates identical bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator

import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from openvision2.data import records

# Saturated and far apart in RGB, and all far from the near-black background.
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 240),
    "yellow": (240, 220, 40),
    "orange": (250, 140, 0),
    "white": (235, 235, 235),
}
KINDS = ("circle", "square", "triangle")
VOCAB_WORDS = ("a", "an", "and", *COLOURS, *KINDS)
CAPTION_FIELD = "caption"
# Bump when rendering or the record layout changes so cached datasets are not silently reused.
# 2: records carry each shape's box and caption as regions.
FORMAT_VERSION = 2

_GAP_FRACTION = 0.04  # Minimum empty margin between shapes and the border, as a fraction of the side.
_SIZE_RANGE = (0.35, 0.5)  # Shape side as a fraction of the image side, when it fits.


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: int  # Left edge; shapes are axis-aligned squares [x, x + size) x [y, y + size).
    y: int
    size: int


def layout(rng: np.random.Generator, image_size: int, n_shapes: int) -> list[Shape]:
    """Random shapes with disjoint x-extents, sorted left to right."""
    if not 1 <= n_shapes <= 3:
        raise ValueError(f"n_shapes must be 1, 2 or 3, got {n_shapes}")
    gap = max(1, round(_GAP_FRACTION * image_size))
    # Three shapes cannot all be 35% wide side by side: cap the size at an equal share of the
    # width so that a disjoint placement always exists.
    hi = min(_SIZE_RANGE[1] * image_size, (image_size - (n_shapes + 1) * gap) / n_shapes)
    lo = min(_SIZE_RANGE[0] * image_size, 0.75 * hi)
    if lo < 3:
        raise ValueError(f"image_size={image_size} is too small to draw {n_shapes} recognisable shapes")
    sizes = np.floor(rng.uniform(lo, hi, size=n_shapes)).astype(int)
    free = image_size - sizes.sum() - (n_shapes + 1) * gap
    # Spread the spare width randomly over the n+1 gaps so positions vary but never overlap.
    extra = np.floor(rng.dirichlet(np.ones(n_shapes + 1)) * free).astype(int)
    colours = rng.choice(list(COLOURS), size=n_shapes)
    kinds = rng.choice(KINDS, size=n_shapes)
    shapes, x = [], 0
    for k in range(n_shapes):
        x += gap + extra[k]
        y = int(rng.integers(gap, image_size - gap - sizes[k] + 1))
        shapes.append(Shape(str(kinds[k]), str(colours[k]), int(x), y, int(sizes[k])))
        x += sizes[k]
    return shapes


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(shapes: list[Shape]) -> str:
    phrases = [f"{_article(s.colour)} {s.colour} {s.kind}" for s in shapes]
    if len(phrases) == 1:
        return phrases[0] + "."
    return ", ".join(phrases[:-1]) + " and " + phrases[-1] + "."


def draw(shapes: list[Shape], image_size: int, background: tuple[int, int, int]) -> np.ndarray:
    img = Image.new("RGB", (image_size, image_size), background)
    pen = ImageDraw.Draw(img)
    for s in shapes:
        x0, y0, x1, y1 = s.x, s.y, s.x + s.size - 1, s.y + s.size - 1
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.kind == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    return np.asarray(img)


def render(rng: np.random.Generator, image_size: int, n_shapes: int) -> tuple[np.ndarray, str]:
    image, text, _ = render_with_layout(rng, image_size, n_shapes)
    return image, text


def render_with_layout(rng: np.random.Generator, image_size: int, n_shapes: int
                       ) -> tuple[np.ndarray, str, list[Shape]]:
    shapes = layout(rng, image_size, n_shapes)
    grey = int(rng.integers(15, 46))
    background = tuple(int(v) for v in np.clip(grey + rng.integers(-5, 6, size=3), 0, 255))
    return draw(shapes, image_size, background), caption(shapes), shapes


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Flat-colour images compress well even at the fastest level; encoding dominates otherwise.
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def regions(shapes: list[Shape]) -> list[dict]:
    """One region per shape: its bounding box and its own one-shape caption."""
    return [{"box": [s.x, s.y, s.x + s.size, s.y + s.size], "caption": caption([s])} for s in shapes]


def example(seed: int, index: int, image_size: int) -> bytes:
    """The encoded record for example `index`; one shape count per residue mod 3 keeps 1/2/3 balanced."""
    image, text, shapes = render_with_layout(np.random.default_rng([seed, index]), image_size, 1 + index % 3)
    return records.encode_record(f"shapes-{seed}-{index:07d}", encode_png(image), {CAPTION_FIELD: text},
                                 regions(shapes))


def generate(num: int, seed: int, image_size: int) -> Iterator[bytes]:
    for i in range(num):
        yield example(seed, i, image_size)


def default_cache_dir() -> str:
    return os.environ.get("OPENVISION2_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "openvision2")


def _shard_paths(split_dir: str, split: str, num_shards: int) -> list[str]:
    return [os.path.join(split_dir, records.shard_name(split, i, num_shards)) for i in range(num_shards)]


def _read_done(split_dir: str) -> dict | None:
    try:
        with open(os.path.join(split_dir, "done.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_dataset(directory: str, split: str, num: int, seed: int, image_size: int, num_shards: int = 4) -> list[str]:
    """Returns the shard paths of `{directory}/{split}`, generating it first if needed.

    The split is built in a private temp dir (with `done.json` written last) and published by
    one atomic rename, so a reader sees either nothing or a complete set. When several processes
    race (multi-host on a shared disk), the first rename wins and the others use its result.
    """
    params = dict(num=num, seed=seed, image_size=image_size, num_shards=num_shards, version=FORMAT_VERSION)
    split_dir = os.path.join(directory, split)
    if _read_done(split_dir) == params:
        return _shard_paths(split_dir, split, num_shards)
    os.makedirs(directory, exist_ok=True)
    tmp_dir = os.path.join(directory, f".{split}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        logging.info("Generating %d synthetic shapes images (%d px, seed %d) into %s", num, image_size, seed, split_dir)
        records.write_shards(generate(num, seed, image_size), tmp_dir, split, num_shards)
        with open(os.path.join(tmp_dir, "done.json"), "w") as f:
            json.dump(params, f)
        if os.path.exists(split_dir) and _read_done(split_dir) != params:
            logging.warning("Replacing %s: it was built with %s, need %s", split_dir, _read_done(split_dir), params)
            stale = os.path.join(directory, f".{split}.stale-{uuid.uuid4().hex[:8]}")
            os.rename(split_dir, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp_dir, split_dir)
        except OSError:
            # Another process published first; its data is identical by construction.
            if _read_done(split_dir) != params:
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return _shard_paths(split_dir, split, num_shards)
