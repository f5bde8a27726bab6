"""One raw photo -> the JPEG bytes that `prepare` stores, with every fault of a web crawl named.

Real Recipe1M photos are web JPEGs of any size and kind. What we repair (and count, by kind, in
`dataset_info.json` under `repaired`): PNG / WebP / GIF bytes under a `.jpg` name (decoded by their
content, not their name), CMYK / grayscale / palette / alpha modes (to RGB; transparency over
white), EXIF orientation (rotated upright), photos much larger than needed (JPEG `draft` mode lets
libjpeg decode at 1/2, 1/4 or 1/8 scale, so a 12 MP photo costs little more than a small one).
What we skip (and report with a reason): a missing or empty file, bytes no decoder recognises,
truncated or corrupt image data, and a "photo" of more than `max_pixels` pixels (a decompression
bomb). Pillow's own bomb check (a warning above `Image.MAX_IMAGE_PIXELS`, an error above twice
that) is replaced by that one explicit limit, so no photo warns and every refusal is reported.
`open_photo` is that check alone: the query photos of search and predict go through it too.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import warnings
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

JPEG_QUALITY = 90
# How `prepare` resizes and stores photos. "xmodal": JPEG draft decode, bicubic, sizes rounded,
# never upscaled, JPEG quality 90 (fast, small). "torchvision": what the released H-T's eval
# transform does before its crop (`transforms.Resize(short_side)` on a PIL image: a full decode,
# Pillow's bilinear, the long side truncated, small photos upscaled too), stored losslessly as
# PNG (larger than the JPEG), so that an imported released model sees its own pixels.
PHOTO_RESIZE = ("xmodal", "torchvision")
MAX_PIXELS = 200_000_000  # ~ 14k x 14k; past this a "photo" is a decompression bomb
LARGE_PIXELS = 12_000_000  # photos of at least this many pixels are counted as "large"
_ORIENTATION = 0x0112
_PIL_LIMIT_LOCK = threading.Lock()


class PhotoError(Exception):
    """A photo that cannot be used; the message is the reason reported in dataset_info."""


@dataclasses.dataclass(frozen=True)
class PhotoSpec:
    """How `prepare` stores each photo: its short side, the size past which a photo is refused
    as a decompression bomb, and the resize (`PHOTO_RESIZE`)."""

    short_side: int = 256
    max_pixels: int = MAX_PIXELS
    resize: str = "xmodal"

    def __post_init__(self) -> None:
        if self.resize not in PHOTO_RESIZE:
            raise ValueError(
                f"photo resize {self.resize!r}: expected one of {', '.join(PHOTO_RESIZE)}"
            )


@dataclasses.dataclass
class Photo:
    jpeg: bytes
    repairs: list[str]  # what was fixed on the way, e.g. ["PNG bytes under a .jpg name"]


def open_photo(source: str | bytes | BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The photo at `source` (a path, its bytes or a binary file), opened lazily: its size is
    checked against `max_pixels` from the header, before a pixel is decoded or allocated, so a
    decompression bomb costs nothing. Raises PhotoError (the reason) for one that cannot be used.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with _PIL_LIMIT_LOCK:  # another thread must not save our None as the limit to restore
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our explicit limit below replaces Pillow's warn/error pair
        try:
            img = Image.open(source)
        except UnidentifiedImageError:
            raise PhotoError("not an image: no decoder recognises the bytes") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise PhotoError(f"image too large: {w}x{h} pixels > max_pixels={max_pixels}")
    if w < 1 or h < 1:
        img.close()
        raise PhotoError(f"image has no pixels: {w}x{h}")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale to 8 bits first
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def torchvision_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(w, h) that `torchvision.transforms.Resize(short_side)` gives: the short side set, the
    long side scaled and truncated."""
    w, h = size
    if w <= h:
        return short_side, int(short_side * h / w)
    return int(short_side * w / h), short_side


def load_photo(path: str, spec: PhotoSpec) -> Photo:
    """The photo at `path` as stored bytes: upright, RGB, short side `spec.short_side`, resized
    and encoded as `spec.resize` says (`PHOTO_RESIZE`).

    Raises PhotoError (with the reason to report) for a photo that cannot be used.
    """
    short_side, torchvision = spec.short_side, spec.resize == "torchvision"
    if not os.path.exists(path):
        raise PhotoError(f"image file not found: {path}")
    if os.path.getsize(path) == 0:
        raise PhotoError("empty image file")
    repairs: list[str] = []
    img = open_photo(path, spec.max_pixels)
    try:
        with warnings.catch_warnings():
            # e.g. "possibly corrupt EXIF data": the pixels decode fine, so the photo is kept
            warnings.simplefilter("ignore")
            fmt, mode, (w, h) = img.format, img.mode, img.size
            if fmt != "JPEG" and path.lower().endswith((".jpg", ".jpeg")):
                repairs.append(f"{fmt} bytes under a .jpg name")
            if mode != "RGB":
                repairs.append(f"{mode} converted to RGB")
            if w * h >= LARGE_PIXELS and not torchvision:  # torchvision decodes in full
                repairs.append("large photo decoded at reduced scale")
            if not torchvision:
                scale = min(1.0, short_side / min(w, h))
                img.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
            img.load()
            if img.getexif().get(_ORIENTATION, 1) not in (1, None):
                repairs.append("rotated upright by EXIF orientation")
                img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            out = io.BytesIO()
            if torchvision:
                img = img.resize(torchvision_size(img.size, short_side), Image.Resampling.BILINEAR)
                img.save(out, format="PNG", compress_level=1)
            else:
                if min(img.size) > short_side:
                    s = short_side / min(img.size)
                    size = (max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s)))
                    img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
                img.save(out, format="JPEG", quality=JPEG_QUALITY)
    except PhotoError:
        raise
    except OSError as e:
        if "truncated" in str(e):
            raise PhotoError(f"truncated image: {e}") from None
        raise PhotoError(f"corrupt image data: {type(e).__name__}: {e}") from None
    except Exception as e:  # any other decoder failure is a reported skip, never a crash
        raise PhotoError(f"corrupt image data: {type(e).__name__}: {e}") from None
    finally:
        img.close()
    return Photo(out.getvalue(), repairs)


def load_image(path: str, short_side: int) -> bytes:
    """`load_photo(...).jpeg` with the default spec at `short_side`: the stored bytes only."""
    return load_photo(path, PhotoSpec(short_side)).jpeg
