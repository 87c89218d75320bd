"""Generated images: class folders told apart by colour, and odd files (every mode, EXIF, a decompression bomb)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["red", "green", "blue"]


def class_image(name: str, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A noisy image whose dominant colour says its class."""
    channel = CLASSES.index(name) % 3
    arr = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    arr[..., channel] = rng.integers(170, 256, size=(size, size), dtype=np.uint8)
    return Image.fromarray(arr)


def make_image_folder(root: Path, per_class: int = 12, splits: tuple[str, ...] = ("train", "test"), seed: int = 0) -> Path:
    """An image folder of the test classes, one sub-folder per class under each split (``""``: none)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for name in CLASSES:
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            count = per_class if split != "test" else max(per_class // 2, 2)
            for i in range(count):
                class_image(name, rng).save(folder / f"{name}_{i}.png")
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width × height pixels (a decompression bomb when large)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _exif_rotated_jpeg() -> bytes:
    """A 40×20 JPEG (left half red) whose EXIF orientation says 'rotate 90° CW' (6)."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20, 0] = 255
    image = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def odd_images() -> dict[str, bytes]:
    """Encoded image files of every awkward kind (modes, transparency, 16 bit, animation, EXIF), by name."""
    rgba = Image.new("RGBA", (6, 6), (255, 0, 0, 0))
    palette = Image.new("P", (6, 6), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    frames = [Image.new("RGB", (5, 5), (255, 0, 0)), Image.new("RGB", (5, 5), (0, 0, 255))]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:])
    return {
        "gray": _save(Image.new("L", (7, 5), 128), "PNG"),
        "gray_alpha": _save(Image.new("LA", (7, 5), (0, 0)), "PNG"),
        "palette_transparent": _save(palette, "PNG", transparency=0),
        "rgba": _save(rgba, "PNG"),
        "cmyk": _save(Image.new("CMYK", (5, 5), (0, 255, 255, 0)), "JPEG"),
        "16bit": _save(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), "PNG"),
        "16bit_mid": _save(Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)), "PNG"),
        "1bit": _save(Image.new("1", (8, 8), 1), "PNG"),
        "animated": anim.getvalue(),
        "tiny": _save(Image.new("RGB", (1, 1), (0, 255, 0)), "PNG"),
        "strip": _save(Image.new("RGB", (1, 400), (0, 255, 0)), "PNG"),
        "exif": _exif_rotated_jpeg(),
    }
