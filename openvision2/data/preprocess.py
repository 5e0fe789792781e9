"""Host-side image ops (numpy/PIL), shared by the training pipeline and the CLIs.

Everything returns uint8 HWC RGB: normalisation to floats happens on device, inside the jit,
so host memory and host-to-device bandwidth stay at one byte per channel.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

# Far above any training resolution, far below what would exhaust host memory when a
# malicious file claims huge dimensions (checked from the header, before decoding).
MAX_PIXELS = 64_000_000
_RESAMPLE = Image.Resampling.BICUBIC
# ITU-R 601 luma, as used by PIL's "L" conversion.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_ASPECT_RANGE = (3 / 4, 4 / 3)
_CROP_TRIES = 10
AUGMENTS = ("inception_crop", "none")


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> uint8 [H, W, 3] RGB, upright according to EXIF.

    Transparent pixels are composited on white: transparent web images (logos, diagrams) are
    drawn for a white page, and the colour stored under alpha=0 is arbitrary (often black).
    16-bit images are scaled to 8 bits rather than clipped.
    """
    if not data:
        raise ValueError("image data is empty")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its own limit and twice that; we enforce ours below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"image is {width}x{height}, more than MAX_PIXELS={MAX_PIXELS} (decompression bomb?)")
            img.load()
    except ValueError:
        raise
    except Exception as e:  # PIL signals bad data with OSError, SyntaxError, EOFError, struct.error, ...
        raise ValueError(f"cannot decode image ({type(e).__name__}: {e})") from e
    img = _upright(img)
    return _to_rgb(img)


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # A malformed EXIF block should not discard an otherwise good image.
        return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(img).astype(np.float32)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except Exception as e:
            raise ValueError(f"cannot convert image mode {img.mode!r} to RGB ({e})") from e
    return np.asarray(img, dtype=np.uint8)


def _resize_box(img: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Crops `box` = (left, top, right, bottom) and resizes to `size` = (width, height) in one PIL call."""
    height, width = img.shape[:2]
    if box == (0, 0, width, height) and size == (width, height):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img).resize(size, _RESAMPLE, box=box))


def _eval_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(width, height) of the image after eval's shorter-side resize."""
    if height <= width:
        return int(image_size * width / height), image_size
    return image_size, int(image_size * height / width)


def eval_crop_box(height: int, width: int, image_size: int) -> tuple[float, float, float, float]:
    """The part of the source image (left, top, right, bottom, in source pixels) that
    `eval_transform` keeps, for mapping region boxes along with the image."""
    size = _eval_size(height, width, image_size)
    sx, sy = size[0] / width, size[1] / height
    top, left = (size[1] - image_size) // 2, (size[0] - image_size) // 2
    return left / sx, top / sy, (left + image_size) / sx, (top + image_size) / sy


def map_boxes(boxes: np.ndarray, crop: tuple[float, float, float, float], image_size: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Region boxes [N, 4] in source pixels -> (boxes in [0, 1] of the `crop` resized to the output
    square, clipped to it; the fraction of each box's area that stays visible)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    left, top, right, bottom = crop
    scale = np.array([right - left, bottom - top, right - left, bottom - top])
    mapped = (boxes - np.array([left, top, left, top])) / scale
    clipped = np.clip(mapped, 0.0, 1.0)
    area = lambda b: np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    visible = area(clipped) / np.maximum(area(mapped), 1e-12)
    return clipped.astype(np.float32), visible


def eval_transform(img: np.ndarray, image_size: int) -> np.ndarray:
    """Resize the shorter side to `image_size` (bicubic), then take the central square.

    Keeps the aspect ratio of arbitrary photos (no squashing) at the price of cutting the
    ends of the longer side, as in the standard ImageNet-style evaluation. The order and the
    size/offset arithmetic are HF `CLIPImageProcessor`'s, so an exported model's
    `preprocessor_config.json` reproduces this exactly.
    """
    height, width = img.shape[:2]
    size = _eval_size(height, width, image_size)
    resized = _resize_box(img, (0, 0, width, height), size)
    top, left = (size[1] - image_size) // 2, (size[0] - image_size) // 2
    return np.ascontiguousarray(resized[top:top + image_size, left:left + image_size])


def inception_crop_box(height: int, width: int, rng: np.random.Generator, area_min: float, area_max: float
                       ) -> tuple[int, int, int, int]:
    """A random (left, top, right, bottom) box covering [area_min, area_max] of the image with
    aspect ratio in [3/4, 4/3]; the central box of clamped aspect ratio if no draw fits."""
    area = height * width
    log_lo, log_hi = math.log(_ASPECT_RANGE[0]), math.log(_ASPECT_RANGE[1])
    for _ in range(_CROP_TRIES):
        target = area * rng.uniform(area_min, area_max)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = min(max(width / height, _ASPECT_RANGE[0]), _ASPECT_RANGE[1])
    w, h = (width, int(round(width / aspect))) if width / height <= aspect else (int(round(height * aspect)), height)
    w, h = min(w, width), min(h, height)
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def colour_jitter(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by U[1-s, 1+s], in random order."""
    x = img.astype(np.float32)
    for op in rng.permutation(3):
        factor = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
        if op == 0:
            x = x * factor
        elif op == 1:
            mean = float((x @ _LUMA).mean())
            x = (x - mean) * factor + mean
        else:
            grey = (x @ _LUMA)[..., None]
            x = (x - grey) * factor + grey
        # Clip after each op, as sequential PIL enhancers would, so op order matters consistently.
        x = np.clip(x, 0.0, 255.0)
    return np.rint(x).astype(np.uint8)


def to_grayscale(img: np.ndarray) -> np.ndarray:
    grey = np.rint(img.astype(np.float32) @ _LUMA).clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def train_transform(img: np.ndarray, image_size: int, rng: np.random.Generator, **augment) -> np.ndarray:
    """Crop/resize to [S, S, 3] then photometric augmentation; no flips (captions name left/right)."""
    return train_transform_with_box(img, image_size, rng, **augment)[0]


def train_transform_with_box(img: np.ndarray, image_size: int, rng: np.random.Generator, *, augment: str,
                             area_min: float, area_max: float, color_jitter: float, color_jitter_prob: float,
                             grayscale_prob: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`train_transform`, also returning the crop (left, top, right, bottom) it took of the source."""
    height, width = img.shape[:2]
    if augment == "inception_crop":
        box = inception_crop_box(height, width, rng, area_min, area_max)
    elif augment == "none":
        box = (0, 0, width, height)
    else:
        raise ValueError(f"unknown augment {augment!r}; choose one of {AUGMENTS}")
    out = _resize_box(img, box, (image_size, image_size))
    if color_jitter > 0 and rng.uniform() < color_jitter_prob:
        out = colour_jitter(out, rng, color_jitter)
    if grayscale_prob > 0 and rng.uniform() < grayscale_prob:
        out = to_grayscale(out)
    return out, box
