"""The image processor's resize and centre crop as one operation on a uint8 batch, on the batch's device."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

#: Largest difference, in uint8 levels, allowed between the processor's bytes and the float
#: resize that torchvision runs on a GPU, for a split to be stored below the model's size.
FLOAT_TOLERANCE = 1


class ProcessorResize:
    """What the model's image processor does to an image's geometry, for a whole uint8 batch.

    ``decode`` keeps a split whose images are all one size, smaller than the model's input,
    at that size (a 32-px CIFAR-10 image takes 3 KB instead of 150 KB at 224 px), and
    ``BatchTransform`` calls this on each batch, on the training device, where an upscale
    costs little. It applies the processor's own steps: for a Hugging Face processor (the
    torchvision backend), its ``resize`` (with ``crop_pct`` where it has one) then its
    ``center_crop`` when ``do_center_crop``, the order of that backend's pipeline; for a timm
    processor, its evaluation transforms up to ``ToTensor``, which take tensors too.

    A split is stored small only when :meth:`matches` holds for its size: on CPU, torch's
    uint8 kernels give exactly the processor's bytes; on a GPU, torchvision resizes uint8
    pixels in float and rounds, which stays within :data:`FLOAT_TOLERANCE` level of them
    for bilinear resizes (ViT's processors). Bicubic ones are not stored small: torch's
    uint8 bicubic kernel clamps between its horizontal and vertical passes and the float path
    does not, up to 24 levels apart on noise images; nor are PIL-based ones (timm's, whose
    PIL bicubic differs from torch's by as much). Those keep today's model-size cache.
    """

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """N×3×h×w uint8 (any device, any memory layout) → N×3×H×W uint8, as the processor."""
        if not pixels.is_floating_point() and pixels.dtype != torch.uint8:
            pixels = pixels.to(torch.uint8)  # datasets' numpy format widens the cached bytes to int64
        if pixels.device.type == "cpu" and not pixels.is_floating_point():
            # torch's uint8 resize works on channels-last pixels and repacks any other
            # layout, on its output too (more than the resize's own time at 224 px); for a
            # small image, the repacking of the input is what costs little.
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self._geometry(pixels)

    def _geometry(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.processor
        if getattr(p, "data_config", None) is not None:  # timm
            head = before_to_tensor(getattr(p, "val_transforms", None))
            if head is None:
                raise ValueError("the timm processor's transforms do not end in ToTensor + Normalize")
            return head(pixels)
        if getattr(p, "do_resize", True):
            extra = {"crop_pct": p.crop_pct} if getattr(p, "crop_pct", None) is not None else {}
            pixels = p.resize(pixels, size=_size_dict(p.size), resample=p.resample, **extra)
        if getattr(p, "do_center_crop", False):
            pixels = p.center_crop(pixels, _size_dict(p.crop_size))
        return pixels

    def matches(self, size: tuple[int, int], reference: Callable[[list], torch.Tensor]) -> bool:
        """Whether this gives ``reference``'s bytes (the processor through ``Decoder.pixels``)
        for noise images of ``size`` (height, width): exactly on CPU, and within
        :data:`FLOAT_TOLERANCE` through the float path GPUs take."""
        from PIL import Image

        noise = np.random.default_rng(1).integers(0, 256, (2, *size, 3), dtype=np.uint8)
        try:
            expected = reference([Image.fromarray(image) for image in noise])
            batch = torch.from_numpy(noise).permute(0, 3, 1, 2)
            native = self(batch)
            floats = self._geometry(batch.float()).round_().clamp_(0, 255)
        except Exception:  # noqa: BLE001 - a processor these steps do not fit keeps the model-size cache
            return False
        if native.shape != expected.shape or floats.shape != expected.shape:
            return False
        return torch.equal(native, expected) and bool((floats - expected.float()).abs().max() <= FLOAT_TOLERANCE)


def _size_dict(size):
    """A processor's ``size`` / ``crop_size`` as the ``SizeDict`` its methods take."""
    from transformers.image_utils import SizeDict

    return size if isinstance(size, SizeDict) else SizeDict(**dict(size))


def before_to_tensor(transforms):
    """A torchvision ``Compose`` cut before its ``ToTensor`` (timm's ``MaybeToTensor``), when
    only normalisation follows it; else None."""
    from torchvision import transforms as T

    steps = list(getattr(transforms, "transforms", []))
    cut = next((i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__), None)
    if cut is None or any(type(step).__name__ != "Normalize" for step in steps[cut + 1 :]):
        return None
    return T.Compose(steps[:cut])
