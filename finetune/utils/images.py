"""One image file opened upright 8-bit RGB, and the junk files folders collect: shared by training and the torch-free exported model."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np


def to_rgb(image, background: tuple[int, int, int] = (255, 255, 255)):
    """Any PIL image → upright 8-bit RGB.

    EXIF orientation is applied first (datasets' Image feature does not:
    huggingface/datasets#6252).
    Transparent images are composited on ``background`` (white, as viewers show them),
    16-bit and 32-bit images are rescaled to 8 bits rather than clipped, animated images
    give their first frame. Pillow's global settings are left alone.
    """
    from PIL import Image, ImageOps

    if getattr(image, "is_animated", False):
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if mode.startswith("I;16") else (float(arr.min()), float(arr.max()))
        if mode == "I" and arr.max() <= 65535 and arr.min() >= 0:
            lo, hi = 0.0, 65535.0 if arr.max() > 255 else 255.0
        scaled = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        image = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, background + (255,))
        canvas.alpha_composite(image)
        return canvas.convert("RGB")
    if mode != "RGB":
        image = image.convert("RGB")
    return image


def open_image(value: dict[str, Any] | str):
    """Open an undecoded ``Image`` value (bytes and/or path) or a path, fully decoded.

    Raises on empty, truncated, non-image and decompression-bomb files; the bomb warning
    (pixels over Pillow's limit) is raised as an error only inside this call.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(_source(value))
        image.load()
    return image


def upright_size(value: dict[str, Any] | str) -> tuple[int, int]:
    """(height, width) of an image once EXIF-rotated (as ``to_rgb`` turns it), from its
    header: no pixel is decoded."""
    from PIL import Image

    with Image.open(_source(value)) as image:
        width, height = image.size
        # Orientations 5-8 turn the image a quarter. Only formats that parse EXIF when
        # opened are asked: elsewhere getexif() would decode the whole image.
        if "exif" in image.info and image.getexif().get(0x0112) in (5, 6, 7, 8):
            width, height = height, width
    return height, width


def _source(value: dict[str, Any] | str) -> Any:
    """What ``PIL.Image.open`` reads for an undecoded ``Image`` value (bytes and/or path) or a path."""
    if isinstance(value, str):
        return value
    if value.get("bytes") is not None:
        return io.BytesIO(value["bytes"])
    return value.get("path")


def image_source(value: dict[str, Any] | str | None) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "<missing>"
    return value.get("path") or "<embedded bytes>"


#: Files and folders that operating systems, archivers and tools leave next to images.
JUNK_FILES = {".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", ".directory"}
JUNK_DIRS = {"__MACOSX", ".git", ".hg", ".svn", "__pycache__"}


def is_junk(name: str, folder: bool = False) -> bool:
    """Hidden entries (macOS's "._photo.jpg" AppleDouble companions among them) and the
    names above; `datasets`' image folder loader skips hidden files too."""
    return name.startswith(".") or (name in JUNK_DIRS if folder else name.lower() in JUNK_FILES)
