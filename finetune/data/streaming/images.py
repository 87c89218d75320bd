"""One streamed image, in a DataLoader worker: read, decoded upright RGB, then randomly cropped from the original (training) or shaped as the model's processor shapes it (evaluation)."""

from __future__ import annotations

import hashlib
import io
import warnings
from typing import Any

import numpy as np
import torch

from finetune.data.decode import Decoder
from finetune.data.transforms import presets, resized_crop_uint8
from finetune.recipe import AugmentConfig
from finetune.utils.images import image_source, open_image, to_rgb


def key_seed(key: str, *parts: int) -> int:
    """A 63-bit seed from an image's key and ``parts`` (the run's seed, the epoch): an image's
    random crop depends on what it is and when, not on which process or worker reads it."""
    text = "|".join([key, *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def read_bytes(value: Any) -> bytes:
    """The encoded bytes of an image value (a path, or an undecoded ``Image`` value)."""
    if isinstance(value, str):
        with open(value, "rb") as f:
            return f.read()
    if value.get("bytes") is not None:
        return value["bytes"]
    with open(value["path"], "rb") as f:
        return f.read()


def decode_upright(value: Any) -> torch.Tensor:
    """The image as upright RGB uint8, 3×H×W: the rules of ``finetune.utils.images`` (EXIF
    rotation, any mode to RGB, truncated files and decompression bombs refused).

    JPEGs in RGB or grey are decoded by torchvision's libjpeg-turbo, which gives Pillow's
    bytes faster (bench/README.md); Pillow still opens the header, so a bomb
    is refused before anything is decoded, and every other file goes through Pillow."""
    from PIL import Image, UnidentifiedImageError

    data = read_bytes(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            header = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            # Pillow names the in-memory buffer; the report names the file, as the cache's does.
            raise UnidentifiedImageError(f"cannot identify image file {image_source(value)!r}") from None
    if header.format == "JPEG" and header.mode in ("RGB", "L"):
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    image = to_rgb(open_image({"bytes": data, "path": None}))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImagePipeline:
    """What a worker does to each image: training (``augment`` given): the random resized
    crop cut from the original image and resized straight to the model's size, then the
    flip and the automatic policy, each draw seeded by the image's key and the epoch;
    evaluation (or training without ``crop_scale``): the model's own image processor, the
    bytes the decode cache would hold. Random erasing and mixup run on the training device,
    as on the decode-cache path.
    """

    def __init__(self, processor, size: tuple[int, int], augment: AugmentConfig | None, seed: int) -> None:
        self.processor = processor
        self.size = tuple(size)
        self.seed = seed
        self.crop_scale = tuple(augment.crop_scale) if augment is not None and augment.crop_scale is not None else None
        self.hflip = bool(augment is not None and augment.hflip)
        self.preset = augment.preset if augment is not None else None
        self._decoder: Decoder | None = None
        self._policy = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_decoder": None, "_policy": None}

    @property
    def augments(self) -> bool:
        return self.crop_scale is not None or self.hflip or self.preset is not None

    def shaped(self, pixels: torch.Tensor) -> torch.Tensor:
        """The processor's resize and crop of one upright image, through its own code."""
        from PIL import Image

        if self._decoder is None:
            self._decoder = Decoder(self.processor, "", "")
        image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        return self._decoder.pixels([image])[0]

    def __call__(self, pixels: torch.Tensor, key: str, epoch: int, train: bool) -> torch.Tensor:
        if not (train and self.augments):
            return self.shaped(pixels)
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as F

        torch.manual_seed(key_seed(key, self.seed, epoch))
        if self.crop_scale is not None:
            crop = v2.RandomResizedCrop(self.size, scale=self.crop_scale, antialias=True)
            p = crop.make_params([pixels])
            # Channels-last: the layout torch's uint8 resize works in (finetune.data.transforms).
            hwc = pixels.permute(1, 2, 0).contiguous().permute(2, 0, 1)
            image = resized_crop_uint8(hwc, p["top"], p["left"], p["height"], p["width"], list(self.size), True)
        else:
            image = self.shaped(pixels)
        if self.hflip and torch.rand(1) < 0.5:
            image = F.horizontal_flip(image)
        if self.preset is not None:
            if self._policy is None:
                self._policy = presets()[self.preset](interpolation=v2.InterpolationMode.BILINEAR)
            image = self._policy(image)
        return image.contiguous()
