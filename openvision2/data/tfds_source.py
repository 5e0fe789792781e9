"""Ready-made eval sets from TFDS (`tfds.data_source`, ArrayRecord format, no TensorFlow).

    --config.data.eval_path=tfds:coco_captions/2017 --config.data.tfds_split=validation \
    --config.data.tfds_data_dir=/data/tfds --config.data.tfds_caption_key=captions/text

TFDS is optional: `pip install tensorflow-datasets` (the `[tfds]` extra). The
dataset must already be prepared in ArrayRecord format under `tfds_data_dir`
(`tfds build --file_format=array_record`, or a builder with
`file_format="array_record"`); nothing is downloaded here.

The caption key (default: the first `data.caption_field`) may be a
`/`-separated path into nested features; when it
holds several captions (COCO has five per image) the first is used, as the
eval reads "the first field" of our own records.
"""

from __future__ import annotations

import numpy as np

PREFIX = "tfds:"


def is_tfds(spec: str) -> bool:
    return spec.startswith(PREFIX)


class TfdsSource:
    """Random access to (uint8 HxWx3 image, caption) of one TFDS split.

    Opens the data source lazily, so the object pickles into grain workers by
    its description rather than by open file handles.
    """

    def __init__(self, spec: str, *, split: str, data_dir: str, image_key: str, caption_key: str):
        if not is_tfds(spec) or not spec[len(PREFIX):]:
            raise ValueError(f"{spec!r} is not `tfds:<name>[/<config>][:<version>]`.")
        self.name = spec[len(PREFIX):]
        self.split, self.data_dir = split, data_dir or None
        self.image_key, self.caption_key = image_key, caption_key
        self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    @property
    def source(self):
        if self._source is None:
            try:
                import tensorflow_datasets as tfds
            except ImportError:
                raise ImportError(f"data.eval_path={PREFIX}{self.name} needs TFDS: pip install tensorflow-datasets "
                                  "(or the [tfds] extra). TensorFlow itself is not needed.") from None
            try:
                self._source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir)
            except Exception as e:  # TFDS raises several types for a dataset that is not prepared
                raise FileNotFoundError(
                    f"TFDS dataset {self.name!r} split {self.split!r} is not available under data_dir="
                    f"{self.data_dir!r} in ArrayRecord format ({type(e).__name__}: {e}). Prepare it first with "
                    f"`tfds build {self.name} --file_format=array_record --data_dir=<dir>` and set "
                    "--config.data.tfds_data_dir.") from None
        return self._source

    def __len__(self) -> int:
        return len(self.source)

    def example(self, index: int) -> tuple[np.ndarray, str]:
        """ValueError if the example lacks the image or caption, or they are unusable."""
        ex = self.source[index]
        image = np.asarray(lookup(ex, self.image_key, index))
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
            raise ValueError(f"example {index}: {self.image_key!r} is {image.dtype} {image.shape}, not a uint8 image")
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        return image[..., :3], _first_text(lookup(ex, self.caption_key, index), index, self.caption_key)

    def describe(self) -> str:
        return f"TFDS {self.name} [{self.split}]"


TRAIN_KEYS_HINT = "--config.data.tfds_image_key / --config.data.tfds_caption_key"


def lookup(example, key: str, index: int, keys_hint: str = TRAIN_KEYS_HINT):
    """The (`/`-nested) feature `key` of an example; a missing one names the keys to set."""
    value = example
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            have = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"TFDS example {index} has no feature {key!r} (at {part!r}: has {have}); set "
                             f"{keys_hint} to the dataset's feature names")
        value = value[part]
    return value


def _first_text(value, index: int, key: str) -> str:
    if isinstance(value, np.ndarray) and value.ndim > 0 or isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise ValueError(f"example {index}: {key!r} holds no caption")
        value = value[0]
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"example {index}: {key!r} is not UTF-8 ({e})") from None
    if not isinstance(value, str):
        raise ValueError(f"example {index}: {key!r} is a {type(value).__name__}, not text")
    return value
