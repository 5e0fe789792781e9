"""Eval sets from files users already have, local or on `gs://` (every read goes through
`openvision2.paths`). `load(spec, task, **options)` detects the format from `spec` and what it
points at:

- **ImageFolder** `<dir>/<class>/<image>` (classification), torchvision's layout
  (https://pytorch.org/vision/stable/generated/torchvision.datasets.ImageFolder.html): the classes
  are the sorted class directory names (hidden ones skipped), the images the files of each with an
  image extension (jpg jpeg png webp bmp gif tif tiff, any case), sorted. Optional
  `<dir>/classnames.txt` (one display name per line, in the sorted-directory order; without it the
  directory names with `_` as spaces) and `<dir>/templates.txt` (one prompt per line, each with
  `{c}`; without it `sets.CLIP_TEMPLATES`).
- **COCO captions JSON** (a `.json` file; captions): the official format
  (https://cocodataset.org/#format-data: `images` [{id, file_name}] + `annotations`
  [{image_id, caption}]) or Karpathy's split file (`dataset_coco.json` / `dataset_flickr30k.json`
  of https://cs.stanford.edu/people/karpathy/deepimagesent/: `images` [{filename, filepath?, split,
  sentences [{raw}], cocoid? / imgid?}]), filtered on option `split` (default "test"; "restval"
  counts as "train"). Images live under option `images`, else beside the JSON (Karpathy: under
  `filepath` there). Ids: COCO `id`, Karpathy `cocoid`, else `imgid`, else the file name. Images
  without a caption are dropped (logged); a missing image file is skipped when decoded.
- **Webdataset directory** in LAION's CLIP_benchmark layout (https://github.com/LAION-AI/CLIP_benchmark,
  its `wds_*` sets): `wds:<dir>`, or a directory holding `<split>/*.tar` (option `split`, default
  "test"), with `<dir>/classnames.txt` (required for classification) and optional
  `<dir>/zeroshot_classification_templates.txt`. Members are grouped into samples by key as
  webdataset does (the name up to the first dot of its base name; consecutive members); the image is
  the first of `.webp .jpg .jpeg .png`, the label the int in `.cls`, the captions the non-empty lines
  of `.txt`. Shards are read in natural order (2.tar before 10.tar). A truncated or damaged shard
  keeps the samples before the damage; the broken samples are logged, counted and skipped. Local
  shards are read lazily (each image by its byte range); a `gs://` shard is fetched whole once and
  its image bytes are kept in memory.
- **TFDS** `tfds:<name>[/<config>][:<version>]` through `data.tfds_source` (`tfds.data_source`,
  the dataset prepared in ArrayRecord format under option `data_dir`, no TensorFlow; the `[tfds]`
  extra): classification reads `label_key` (default "label") and the dataset's label names,
  captions every caption of `caption_key` (default "captions/text"); images from `image_key`.
  Loading reads every example once (TFDS decodes the image with it) for the labels / captions.
- **Our ArrayRecord shards** (`data.records`): a directory of `*.array_record`, a glob, a
  comma-separated list of those, or one shard. Captions: `[captions[f] for f in caption_field]`
  (option `caption_field`, default "caption"; a comma-separated list gives several captions per
  image), ids the record keys. Classification: the class name is `captions[caption_field]`, the
  classes the sorted distinct names, the templates `["{c}"]`. Images are read lazily by record
  index (a shared, thread-safe reader opened on first use); undecodable records are counted and
  skipped.

Options (all optional; None means the default): `images`, `split`, `caption_field`, `label_key`,
`caption_key`, `image_key`, `data_dir`, and for any classification set `templates` (a list of
prompts with `{c}`, or one) and `classnames` (a list of display names, or the path of a text file
with one a line) overriding what the files give.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import tarfile
import threading
from collections import Counter, defaultdict

import numpy as np
from absl import logging

from openvision2 import paths
from openvision2.data import records, tfds_source
from openvision2.evals import sets

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WDS_IMAGE_EXTENSIONS = ("webp", "jpg", "jpeg", "png")  # the first present is the sample's image
WDS_PREFIX = "wds:"
CLASSNAMES_TXT, TEMPLATES_TXT, WDS_TEMPLATES_TXT = (
    "classnames.txt", "templates.txt", "zeroshot_classification_templates.txt")

DEFAULTS = {"images": None, "split": "test", "caption_field": "caption", "label_key": "label",
            "caption_key": "captions/text", "image_key": "image", "data_dir": None, "templates": None,
            "classnames": None}

_LAYOUTS = ("an ImageFolder tree (<dir>/<class>/<image>), a COCO captions .json, a webdataset dir "
            "(<dir>/<split>/*.tar) nor ArrayRecord shards (*.array_record)")


def load(spec: str, task: str, **options) -> sets.ClassificationSet | sets.CaptionSet:
    """The eval set in the files `spec` names, for `task` (`sets.CLASSIFICATION` or `sets.CAPTIONS`)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown eval set option(s) {', '.join(unknown)} for {spec!r}; the options are "
                        f"{', '.join(DEFAULTS)}")
    if task not in (sets.CLASSIFICATION, sets.CAPTIONS):
        raise ValueError(f"unknown eval task {task!r}: use {sets.CLASSIFICATION!r} or {sets.CAPTIONS!r}")
    opts = {k: v if options.get(k) is None else options[k] for k, v in DEFAULTS.items()}
    kind, where = detect(str(spec), opts["split"])
    return _LOADERS[kind](where, task, opts)


def detect(spec: str, split: str = "test") -> tuple[str, str]:
    """(format, path): "tfds", "webdataset", "coco", "array_record" or "imagefolder"."""
    if tfds_source.is_tfds(spec):
        return "tfds", spec
    if spec.startswith(WDS_PREFIX):
        return "webdataset", spec[len(WDS_PREFIX):]
    if "," in spec or any(c in spec for c in "*?["):
        return "array_record", spec
    path = paths.resolve(spec)
    if not paths.exists(path):
        builtin = ", ".join(sets.BUILTIN)
        raise FileNotFoundError(f"eval set {spec!r}: no such file or directory, and not a built-in set ({builtin}) "
                                f"or tfds:<name>. Give {_LAYOUTS.replace(' nor ', ' or ')}.")
    if paths.isfile(path):
        if path.lower().endswith(".json"):
            return "coco", path
        if path.endswith(records.SHARD_SUFFIX):
            return "array_record", path
    elif paths.isdir(path):
        if paths.glob(paths.join(path, "*", "*.tar")):
            return "webdataset", path
        if paths.glob(paths.join(path, f"*{records.SHARD_SUFFIX}")):
            return "array_record", path
        if any(not n.startswith(".") and paths.isdir(paths.join(path, n)) for n in paths.listdir(path)):
            return "imagefolder", path
    raise ValueError(f"{spec} is neither {_LAYOUTS}.")


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _need(task: str, want: str, what: str, spec: str) -> None:
    if task != want:
        others = ("a COCO captions .json, a webdataset dir with .txt captions, ArrayRecord shards or tfds:<name>"
                  if task == sets.CAPTIONS else "an ImageFolder tree, a webdataset dir with classnames.txt, "
                  "ArrayRecord shards or tfds:<name>")
        raise ValueError(f"{spec} is {what}, which holds a {want} set; this evaluator needs a {task} set: "
                         f"give {others}.")


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if paths.is_remote(path) else os.path.dirname(os.path.abspath(path))


def _name(path: str) -> str:
    return paths.basename(path.rstrip("/")) or path


def _lines(path: str) -> list[str]:
    """The non-blank lines of a text file, stripped."""
    return [line.strip() for line in paths.read_text(path).splitlines() if line.strip()]


def _templates(given, path: str | None, default) -> list[str]:
    """The `templates` option, else the lines of `path` if it exists, else `default`; each needs `{c}`."""
    if given is not None:
        templates, where = ([given] if isinstance(given, str) else list(given)), "option templates"
    elif path is not None and paths.exists(path):
        templates, where = _lines(path), path
    else:
        return list(default)
    if not templates:
        raise ValueError(f"{where} holds no prompt template: give one a line, each with {{c}} for the class name")
    for i, t in enumerate(templates, 1):
        if not isinstance(t, str) or "{c}" not in t:
            raise ValueError(f"{where}, template {i} ({t!r}) has no {{c}}: every prompt template needs {{c}} where "
                             "the class name goes (e.g. 'a photo of a {c}.')")
    return templates


def _classnames(given, path: str | None) -> list[str] | None:
    """The `classnames` option (a list, or a text file's path), else `path`'s lines if it exists, else None."""
    if given is not None:
        return _lines(given) if isinstance(given, str) else [str(c) for c in given]
    if path is not None and paths.exists(path):
        return _lines(path)
    return None


def _natural(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", paths.basename(path))]


# ---------------------------------------------------------------------------------------------
# ImageFolder


def image_folder(root: str, task: str, opts: dict) -> sets.ClassificationSet:
    _need(task, sets.CLASSIFICATION, "an ImageFolder tree", root)
    remote = paths.is_remote(root)
    listed = paths.glob(paths.join(root, "*", "*"))  # one listing, also on an object store
    by_class: dict[str, list[str]] = defaultdict(list)
    for f in listed:
        name, cls = paths.basename(f), paths.basename(_parent(f))
        if not cls.startswith(".") and not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
            by_class[cls].append(f)
    if remote:  # an object store has no empty directories: the classes are the prefixes that hold objects
        classes = sorted({c for c in (paths.basename(_parent(f)) for f in listed) if c and c[0] != "."})
    else:
        classes = [n for n in paths.listdir(root) if not n.startswith(".") and os.path.isdir(os.path.join(root, n))]
    if not classes:
        raise ValueError(f"{root} holds no class directory: an ImageFolder tree is <dir>/<class>/<image>, one "
                         "directory of images per class")
    empty = [c for c in classes if not by_class.get(c)]
    if empty:
        raise ValueError(f"{root}: class directories without images ({', '.join(empty[:5])}"
                         f"{', ...' if len(empty) > 5 else ''}): each class needs at least one "
                         f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} file directly inside it")
    names = _classnames(opts["classnames"], paths.join(root, CLASSNAMES_TXT))
    if names is None:
        names = [c.replace("_", " ") for c in classes]
    elif len(names) != len(classes):
        raise ValueError(f"{paths.join(root, CLASSNAMES_TXT)} has {len(names)} class names for {len(classes)} class "
                         "directories: give exactly one display name a line, in the sorted order of the directories "
                         f"({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''})")
    templates = _templates(opts["templates"], paths.join(root, TEMPLATES_TXT), sets.CLIP_TEMPLATES)
    items, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(by_class[cls])
        items += files
        labels += [label] * len(files)
    logging.info("ImageFolder %s: %d images of %d classes", root, len(items), len(classes))
    return sets.ClassificationSet(_name(root), sets.Images(items), np.asarray(labels, np.int64), names, templates)


# ---------------------------------------------------------------------------------------------
# COCO captions JSON (official or Karpathy split)


def coco_json(path: str, task: str, opts: dict) -> sets.CaptionSet:
    _need(task, sets.CAPTIONS, "a COCO captions .json", path)
    try:
        data = json.loads(paths.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path} has no 'images' list: expected COCO captions ({{'images': [{{id, file_name}}], "
                         "'annotations': [{image_id, caption}]}) or a Karpathy split file ({'images': [{filename, "
                         "split, sentences: [{raw}]}]})")
    root = opts["images"] or _parent(path)
    try:
        if "annotations" in data:
            rows = _coco_official(images, data["annotations"], root)
        elif all(isinstance(im, dict) and "sentences" in im for im in images):
            rows = _coco_karpathy(images, root, opts["split"], path)
        else:
            raise ValueError("neither 'annotations' (official COCO) nor per-image 'sentences' (Karpathy split)")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed COCO captions file (missing or wrong field {e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    kept = [r for r in rows if r[1]]
    if len(kept) < len(rows):
        logging.warning("%s: dropped %d of %d images that have no caption", path, len(rows) - len(kept), len(rows))
    if not kept:
        raise ValueError(f"{path}: no image with a caption")
    items, captions, ids = (list(x) for x in zip(*kept))
    logging.info("COCO captions %s: %d images, %d captions", path, len(items), sum(map(len, captions)))
    return sets.CaptionSet(_name(path).rsplit(".", 1)[0], sets.Images(items), captions, ids)


def _coco_official(images: list, annotations: list, root: str) -> list[tuple]:
    by_id = defaultdict(list)
    for ann in annotations:
        text = str(ann["caption"]).strip()
        if text:
            by_id[ann["image_id"]].append(text)
    return [(paths.join(root, im["file_name"]), by_id.get(im["id"], []), im["id"]) for im in images]


def _coco_karpathy(images: list, root: str, split: str, path: str) -> list[tuple]:
    wanted = {split, "restval"} if split == "train" else {split}
    chosen = [im for im in images if im.get("split") in wanted]
    if not chosen:
        present = sorted({str(im.get("split")) for im in images})
        raise ValueError(f"no image of split {split!r} (the file has {', '.join(present)}): set the option split")
    rows = []
    for im in chosen:
        where = paths.join(root, im["filepath"], im["filename"]) if im.get("filepath") else paths.join(
            root, im["filename"])
        texts = [str(s.get("raw") or " ".join(s.get("tokens", []))).strip() for s in im["sentences"]]
        image_id = im["cocoid"] if "cocoid" in im else im["imgid"] if "imgid" in im else im["filename"]
        rows.append((where, [t for t in texts if t], image_id))
    return rows


# ---------------------------------------------------------------------------------------------
# Webdataset directory (CLIP_benchmark layout)


class _TarMember:
    """The bytes of one member of a local tar, read when called (thread-safe: its own file handle)."""

    def __init__(self, path: str, offset: int, size: int):
        self.path, self.offset, self.size = path, offset, size

    def __call__(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise ValueError(f"{self.path}: member at byte {self.offset} is truncated")
        return data


_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's base_plus_ext (no leading-dot names)


def _tar_samples(shard: str, skipped: Counter):
    """(key, {ext: bytes or a _TarMember}) of each sample of a shard, in order; damage is logged and
    counted in `skipped`, and ends the shard (the samples before it are kept)."""
    remote = paths.is_remote(shard)
    if remote:
        data = paths.read_bytes(shard)
        f, size = io.BytesIO(data), len(data)
    else:
        f, size = open(shard, "rb"), os.path.getsize(shard)
    with f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except (tarfile.TarError, EOFError, OSError) as e:
            logging.warning("%s: unreadable tar shard, skipped (%s: %s)", shard, type(e).__name__, e)
            skipped["unreadable shard"] += 1
            return
        key, sample = None, {}
        while True:
            try:
                m = tar.next()
            except (tarfile.TarError, EOFError, OSError) as e:
                logging.warning("%s: damaged after byte %d (%s: %s); the samples before it are kept", shard,
                                tar.offset, type(e).__name__, e)
                skipped["damaged shard"] += 1
                break
            if m is None:
                if _has_data_after(f, tar.offset):
                    logging.warning("%s: unreadable tar header at byte %d; the samples after it are lost", shard,
                                    tar.offset)
                    skipped["damaged shard"] += 1
                break
            match = _KEY_EXT.match(m.name)
            if not m.isfile() or not match:
                continue
            k, ext = match.group(1), match.group(2).lower()
            if k != key or ext in sample:
                if sample:
                    yield key, sample
                key, sample = k, {}
            if m.offset_data + m.size > size:
                sample["_truncated"] = True
            elif ext in WDS_IMAGE_EXTENSIONS:
                sample[ext] = data[m.offset_data:m.offset_data + m.size] if remote else _TarMember(
                    shard, m.offset_data, m.size)
            elif ext in ("cls", "txt"):
                sample[ext] = tar.extractfile(m).read()
        if sample:
            yield key, sample


def _has_data_after(f, offset: int) -> bool:
    """Whether anything but the zero blocks that end a tar follows `offset`."""
    f.seek(offset)
    while chunk := f.read(1 << 20):
        if chunk.strip(b"\0"):
            return True
    return False


def webdataset(root: str, task: str, opts: dict) -> sets.ClassificationSet | sets.CaptionSet:
    root, split = root.rstrip("/") or root, opts["split"]
    shards = sorted(paths.glob(paths.join(root, split, "*.tar")), key=_natural)
    if not shards:
        present = sorted({paths.basename(_parent(p)) for p in paths.glob(paths.join(root, "*", "*.tar"))})
        raise FileNotFoundError(f"{root} has no {split}/*.tar shards (CLIP_benchmark's webdataset layout is "
                                f"<dir>/<split>/*.tar); splits there: {', '.join(present) or 'none'}: set the "
                                "option split")
    classification = task == sets.CLASSIFICATION
    if classification:
        classnames = _classnames(opts["classnames"], paths.join(root, CLASSNAMES_TXT))
        if classnames is None:
            raise FileNotFoundError(
                f"{root} has no {CLASSNAMES_TXT}: a CLIP_benchmark webdataset for classification is "
                f"<dir>/{CLASSNAMES_TXT} (one class name a line, line i = label i), optionally "
                f"<dir>/{WDS_TEMPLATES_TXT} (one prompt a line with {{c}}), and <dir>/<split>/*.tar whose samples "
                "hold an image (.webp/.jpg/.jpeg/.png) and its label (.cls); or pass the option classnames")
        templates = _templates(opts["templates"], paths.join(root, WDS_TEMPLATES_TXT), sets.CLIP_TEMPLATES)
    items, targets, ids, skipped = [], [], [], Counter()
    for shard in shards:
        for key, sample in _tar_samples(shard, skipped):
            image = next((sample[e] for e in WDS_IMAGE_EXTENSIONS if e in sample), None)
            if sample.get("_truncated"):
                skipped["truncated sample"] += 1
                continue
            if image is None:
                skipped["no image"] += 1
                continue
            if classification:
                try:
                    target = int(sample["cls"].decode("utf-8").strip())
                except (KeyError, ValueError, UnicodeDecodeError):
                    skipped["no valid .cls label"] += 1
                    continue
                if not 0 <= target < len(classnames):
                    raise ValueError(f"{shard}: sample {key} has label {target}, but {CLASSNAMES_TXT} names "
                                     f"{len(classnames)} classes: it needs one line per label 0..N-1")
            else:
                text = sample.get("txt", b"").decode("utf-8", errors="replace")
                target = [line.strip() for line in text.splitlines() if line.strip()]
                if not target:
                    skipped["no .txt caption"] += 1
                    continue
            items.append(image)
            targets.append(target)
            ids.append(key)
    if skipped:
        logging.warning("webdataset %s [%s]: skipped %s", root, split,
                        ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    if not items:
        raise ValueError(f"{root} [{split}]: no usable sample in {len(shards)} shards (each needs an image "
                         f"(.webp/.jpg/.jpeg/.png) and {'a .cls label' if classification else 'a .txt caption'})")
    logging.info("webdataset %s [%s]: %d samples from %d shards", root, split, len(items), len(shards))
    if classification:
        return sets.ClassificationSet(_name(root), sets.Images(items), np.asarray(targets, np.int64), classnames,
                                      templates)
    return sets.CaptionSet(_name(root), sets.Images(items), targets, ids)


# ---------------------------------------------------------------------------------------------
# TFDS


def _nested(example, key: str, index: int):
    return tfds_source.lookup(example, key, index, keys_hint="the option label_key / caption_key / image_key")


def _texts(value) -> list[str]:
    values = list(value) if isinstance(value, (list, tuple)) or (
        isinstance(value, np.ndarray) and value.ndim > 0) else [value]
    out = []
    for v in values:
        if isinstance(v, np.ndarray):
            v = v.item()
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        if str(v).strip():
            out.append(str(v).strip())
    return out


def _tfds_image(source: tfds_source.TfdsSource, key: str, index: int) -> np.ndarray:
    image = np.asarray(_nested(source.source[index], key, index))
    if image.ndim == 3 and image.shape[-1] in (1, 4):
        image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    return image


def _label_names(source, key: str):
    try:
        feature = source.dataset_info.features
        for part in key.split("/"):
            feature = feature[part]
        return list(feature.names)
    except Exception:  # noqa: BLE001 - the source exposes no names for this feature
        return None


def tfds_set(spec: str, task: str, opts: dict) -> sets.ClassificationSet | sets.CaptionSet:
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        raise ImportError(f"eval set {spec} needs TensorFlow Datasets: pip install -e '.[tfds]' (the [tfds] extra; "
                          "TensorFlow itself is not needed), with the dataset prepared in ArrayRecord format under "
                          "the option data_dir") from None
    classification = task == sets.CLASSIFICATION
    key = opts["label_key"] if classification else opts["caption_key"]
    src = tfds_source.TfdsSource(spec, split=opts["split"], data_dir=opts["data_dir"], image_key=opts["image_key"],
                                 caption_key=key)
    source = src.source  # opens it (the FileNotFoundError says how to prepare it)
    targets, kept = [], []
    for i in range(len(source)):
        value = _nested(source[i], key, i)
        if classification:
            try:
                targets.append(int(np.asarray(value)))
            except (TypeError, ValueError):
                raise ValueError(f"{spec}: example {i}: feature {key!r} is not an integer label: set the option "
                                 "label_key") from None
        else:
            texts = _texts(value)
            if texts:
                targets.append(texts)
                kept.append(i)
    name = spec[len(tfds_source.PREFIX):]
    if classification:
        classnames = _classnames(opts["classnames"], None) or _label_names(source, key)
        if classnames is None:
            raise ValueError(f"{spec}: feature {key!r} exposes no label names: pass the option classnames (a list, "
                             "or a text file with one name a line, line i = label i)")
        templates = _templates(opts["templates"], None, sets.CLIP_TEMPLATES)
        items = [functools.partial(_tfds_image, src, opts["image_key"], i) for i in range(len(targets))]
        return sets.ClassificationSet(name, sets.Images(items), np.asarray(targets, np.int64), classnames, templates)
    if len(kept) < len(source):
        logging.warning("%s: dropped %d examples without a caption in %r", spec, len(source) - len(kept), key)
    items = [functools.partial(_tfds_image, src, opts["image_key"], i) for i in kept]
    return sets.CaptionSet(name, sets.Images(items), targets, kept)


# ---------------------------------------------------------------------------------------------
# Our ArrayRecord shards


class _LazyRecords:
    """The records of some shards, the reader opened on first use and shared by threads (grain's
    ArrayRecord source creates each shard's reader under a lock)."""

    def __init__(self, shard_paths: list[str]):
        self.paths, self._source, self._lock = list(shard_paths), None, threading.Lock()

    def image(self, index: int) -> bytes:
        if self._source is None:
            with self._lock:
                if self._source is None:
                    import grain
                    self._source = grain.sources.ArrayRecordDataSource(self.paths)
        return records.decode_record(self._source[index])["image"]


def _read_all(source, chunk: int = 256):
    """(index, raw bytes or None if unreadable) for every record, read a chunk at a time."""
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        try:
            raws = source.__getitems__(keys)
        except Exception:  # noqa: BLE001 - find which record of the chunk is unreadable
            raws = []
            for k in keys:
                try:
                    raws.append(source[k])
                except Exception:  # noqa: BLE001
                    raws.append(None)
        yield from zip(keys, raws)


def array_records(spec: str, task: str, opts: dict) -> sets.ClassificationSet | sets.CaptionSet:
    import grain

    shard_paths = records.resolve_paths(spec)
    fields = list(dict.fromkeys(f.strip() for f in str(opts["caption_field"]).split(",") if f.strip()))
    classification = task == sets.CLASSIFICATION
    if opts["classnames"] is not None:
        raise ValueError(f"{spec}: ArrayRecord class names are the texts of caption field {opts['caption_field']!r}; "
                         "the option classnames applies to ImageFolder, webdataset and TFDS sets")
    if not fields or classification and len(fields) != 1:
        what = "one field" if classification else "fields"
        raise ValueError(f"option caption_field={opts['caption_field']!r}: name {what} of the records' captions "
                         "(classification: the one whose text is the class name)")
    source = grain.sources.ArrayRecordDataSource(shard_paths)
    indices, targets, ids, bad, missing, seen = [], [], [], 0, 0, set()
    for i, raw in _read_all(source):
        try:
            if raw is None:
                raise ValueError("unreadable")
            record = records.decode_record(raw)
        except ValueError as e:
            bad += 1
            if bad <= 3:
                logging.warning("%s: record %d is undecodable, skipped (%s)", spec, i, e)
            continue
        seen.update(record["captions"])
        texts = [record["captions"][f].strip() for f in fields if record["captions"].get(f, "").strip()]
        if not texts:
            missing += 1
            continue
        indices.append(i)
        targets.append(texts[0] if classification else texts)
        ids.append(record["key"])
    del source
    if bad or missing:
        logging.warning("%s: skipped %d undecodable records and %d without caption field %s", spec, bad, missing,
                        "/".join(fields))
    if not indices:
        raise ValueError(f"{spec}: no usable record in {len(shard_paths)} shards ({bad} undecodable, {missing} without "
                         f"{'/'.join(fields)}; the records' caption fields: {', '.join(sorted(seen)) or 'none'}): set "
                         "the option caption_field")
    lazy = _LazyRecords(shard_paths)
    items = sets.Images([functools.partial(lazy.image, i) for i in indices])
    name = _name(spec.split(",")[0]).replace(records.SHARD_SUFFIX, "")
    logging.info("ArrayRecord eval set %s: %d records from %d shards", spec, len(indices), len(shard_paths))
    if classification:
        classnames = sorted(set(targets))
        index = {c: k for k, c in enumerate(classnames)}
        templates = _templates(opts["templates"], None, ["{c}"])
        return sets.ClassificationSet(name, items, np.asarray([index[t] for t in targets], np.int64), classnames,
                                      templates)
    return sets.CaptionSet(name, items, targets, ids)


_LOADERS = {"imagefolder": image_folder, "coco": coco_json, "webdataset": webdataset, "tfds": tfds_set,
            "array_record": array_records}
