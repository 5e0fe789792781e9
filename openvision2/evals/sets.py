"""Eval sets: labelled images (classification) and images with several captions (retrieval,
captioning), read lazily, decoded in batches, with bad images skipped and counted.

`load(spec, task, ...)` reads the `data` of an evaluator's config:
- built in, generated or shipped with a PyPI package, nothing downloaded:
  `shapes_classes` (one shape per image; 18 classes, colour x kind), `shapes_captions`
  (1-3 shapes per image, three captions each: left to right, right to left, and the
  shapes sorted by kind), `digits` (scikit-learn's 1,797 real 8x8 handwritten digits,
  10 classes) and `lfw` (scikit-image's `lfw_subset`: 100 faces and 100 non-faces, 25x25);
- files users have (see `evals/formats.py`): an ImageFolder tree `<dir>/<class>/<image>`
  (with optional `classnames.txt` / `templates.txt`), a COCO captions JSON (official or
  Karpathy split), a CLIP_benchmark-style webdataset directory, `tfds:<name>`, or our
  ArrayRecord shards.

Every host builds the same set (same order), so evaluators split its batches across hosts
like the training batches.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from openvision2 import paths
from openvision2.data import preprocess, shapes

CLASSIFICATION, CAPTIONS = "classification", "captions"

# Built-in sets: name -> (task, builder(image_size of the rendered shapes, num, seed)).
BUILTIN: dict[str, tuple[str, Callable]] = {}

# CLIP's short ensemble of ImageNet prompts (the "clip_best" 8 of its 80), a sensible default
# for ImageFolder trees that ship no templates.txt.
CLIP_TEMPLATES = (
    "itap of a {c}.", "a bad photo of the {c}.", "a origami {c}.", "a photo of the large {c}.",
    "a {c} in a video game.", "art of the {c}.", "a photo of the small {c}.", "a photo of a {c}.")


class Images:
    """A list of images, decoded on demand: each item is encoded bytes, a path (local or gs://),
    a uint8 [H, W, 3] / [H, W] array, or a zero-argument callable returning one of those."""

    def __init__(self, items: Sequence, workers: int = 8):
        self.items, self.workers = list(items), workers

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices) -> Images:
        return Images([self.items[i] for i in indices], self.workers)

    def _one(self, item, image_size: int) -> np.ndarray:
        if callable(item):
            item = item()
        if isinstance(item, str):
            item = paths.read_bytes(item)
        if isinstance(item, (bytes, bytearray)):
            img = preprocess.decode_image(bytes(item))
        else:
            img = np.asarray(item)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=-1)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                raise ValueError(f"expected a uint8 [H, W, 3] image, got {img.dtype} {img.shape}")
        return preprocess.eval_transform(img, image_size)

    def load(self, indices, image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(uint8 [n, S, S, 3], ok bool [n], one error message per bad item): the eval preprocessing
        (shorter side to S, centre crop). A bad or missing image is a black square marked not ok."""
        out = np.zeros((len(indices), image_size, image_size, 3), np.uint8)
        ok = np.ones(len(indices), bool)
        errors = []

        def work(j_i):
            j, i = j_i
            try:
                out[j] = self._one(self.items[i], image_size)
            except Exception as e:  # noqa: BLE001 - any unreadable image is skipped and counted
                ok[j] = False
                errors.append(f"item {i}: {type(e).__name__}: {e}")

        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(work, enumerate(indices)))
        return out, ok, errors


@dataclasses.dataclass
class ClassificationSet:
    name: str
    images: Images
    labels: np.ndarray  # int [N]
    classnames: list[str]
    templates: list[str]  # "{c}" = the class name; optional "{a}" = its article ("a" / "an")

    def __len__(self) -> int:
        return len(self.images)


@dataclasses.dataclass
class CaptionSet:
    name: str
    images: Images
    captions: list[list[str]]  # each image's reference captions (at least one)
    image_ids: list  # ids as the source names them (COCO image_id), for results files

    def __len__(self) -> int:
        return len(self.images)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def fill(template: str, classname: str) -> str:
    """A prompt: `{c}` -> the class name, `{a}` -> its indefinite article."""
    return template.replace("{a}", article(classname)).replace("{c}", classname)


def builtin(name: str, task: str):
    def wrap(fn):
        BUILTIN[name] = (task, fn)
        return fn
    return wrap


@builtin("shapes_classes", CLASSIFICATION)
def shapes_classes(image_size: int, num: int, seed: int) -> ClassificationSet:
    """One shape per image, drawn like the demo data (held out: its own seed); the class is
    the shape's colour and kind, the prompt the demo's own caption ("a red circle.")."""
    classnames = [f"{colour} {kind}" for colour in shapes.COLOURS for kind in shapes.KINDS]
    items, labels = [], []
    for i in range(num):
        image, _, layout = shapes.render_with_layout(np.random.default_rng([seed, 7, i]), image_size, 1)
        items.append(image)
        labels.append(classnames.index(f"{layout[0].colour} {layout[0].kind}"))
    return ClassificationSet("shapes_classes", Images(items), np.asarray(labels), classnames, ["{a} {c}."])


@builtin("shapes_captions", CAPTIONS)
def shapes_captions(image_size: int, num: int, seed: int) -> CaptionSet:
    """1-3 shapes per image, each image a distinct left-to-right caption, and three captions:
    left to right (the demo's), right to left, and ordered by kind then colour."""
    items, captions, seen = [], [], set()
    i = 0
    while len(items) < num:
        rng = np.random.default_rng([seed, 11, i])
        image, text, layout = shapes.render_with_layout(rng, image_size, 1 + i % 3)
        i += 1
        if text in seen:
            continue
        seen.add(text)
        by_kind = sorted(layout, key=lambda s: (shapes.KINDS.index(s.kind), s.colour))
        items.append(image)
        captions.append([text, shapes.caption(layout[::-1]), shapes.caption(by_kind)])
    return CaptionSet("shapes_captions", Images(items), captions, list(range(num)))


@builtin("digits", CLASSIFICATION)
def digits(image_size: int, num: int, seed: int) -> ClassificationSet:
    """scikit-learn's handwritten digits (UCI, 1,797 8x8 images at 17 grey levels), white on black."""
    del image_size, seed
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [np.asarray(np.round(x * (255.0 / 16.0)), np.uint8) for x in d.images]
    n = len(images) if not num else min(num, len(images))
    return ClassificationSet("digits", Images(images[:n]), np.asarray(d.target[:n]),
                             ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
                             ["a photo of the number {c}.", "a handwritten digit {c}."])


@builtin("lfw", CLASSIFICATION)
def lfw(image_size: int, num: int, seed: int) -> ClassificationSet:
    """scikit-image's `lfw_subset`: 100 25x25 grey face crops (Labeled Faces in the Wild), then 100
    non-face crops of the same size."""
    del image_size, num, seed
    from skimage import data

    x = data.lfw_subset()
    images = [np.asarray(np.round(im * 255.0), np.uint8) for im in x]
    labels = np.asarray([0] * 100 + [1] * (len(images) - 100))
    return ClassificationSet("lfw", Images(images), labels, ["face", "non-face"], ["a photo of a {c}."])


def load(spec: str, task: str, *, image_size: int, num: int = 0, seed: int = 0, **options):
    """The eval set `spec` names, for `task` (CLASSIFICATION or CAPTIONS). `num` > 0 caps the
    examples (built-in sets: how many to generate); `image_size` is what shapes are drawn at."""
    if spec in BUILTIN:
        kind, fn = BUILTIN[spec]
        if kind != task:
            raise ValueError(f"eval set {spec!r} is a {kind} set; this evaluator needs a {task} set "
                             f"(built in: {', '.join(n for n, (k, _) in BUILTIN.items() if k == task)}).")
        return fn(image_size, num or _DEFAULT_NUM.get(spec, 0), seed)
    from openvision2.evals import formats

    out = formats.load(spec, task, **options)
    if num and len(out) > num:
        out = first(out, num)
    return out


_DEFAULT_NUM = {"shapes_classes": 360, "shapes_captions": 240}


def first(s, n: int):
    """The first `n` examples of a set."""
    if isinstance(s, ClassificationSet):
        return dataclasses.replace(s, images=s.images.subset(range(n)), labels=s.labels[:n])
    return dataclasses.replace(s, images=s.images.subset(range(n)), captions=s.captions[:n],
                               image_ids=s.image_ids[:n])
