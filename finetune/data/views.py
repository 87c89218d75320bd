"""Test-time views of a normalised batch (the image, its mirror image, corner crops), made on the batch's device with torchvision.transforms.v2's functional ops.

The views of ``evaluation.tta`` (:mod:`finetune.evaluation.tta` averages a model's outputs
over them):

- ``none``: the image as the processor made it (the model's input);
- ``hflip``: that and its mirror image;
- ``hflip+crops``: those, and four corner crops of :data:`CROP_FRACTION` of each side,
  each resized back to the input size and mirrored too: 10 views.

The set is closed under mirroring (the mirror of the top-left crop is the top-right crop of
the mirror image), so an averaged prediction does not change when the input is mirrored.
The whole image stands in for the centre crop of the classic ten-crop: it is what the model
was validated on, and the processor's own centre crop already made it. The corner crops
zoom in by 1/:data:`CROP_FRACTION`, keeping about three quarters of the area: inside the
range that the shipped recipes' random resized crops train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finetune.recipe import TTA

#: Each corner crop's share of the input's height and width (timm's default centre-crop
#: fraction, the zoom most ImageNet models were validated at).
CROP_FRACTION = 0.875
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: The recipe's and the commands' choices, with what each means, for the logs and the card.
MODES: dict[str, str] = {
    "none": "one view per image",
    "hflip": "2 views per image: the image and its mirror image",
    "hflip+crops": (
        f"10 views per image: the image and {len(CORNERS)} corner crops of {CROP_FRACTION:.1%} of each side "
        "(resized back to the input size), each also mirrored"
    ),
}


@dataclass(frozen=True)
class View:
    """One view: a corner crop (None: the whole image), mirrored or not."""

    corner: str | None
    flip: bool

    @property
    def name(self) -> str:
        return (self.corner or "whole") + (", mirrored" if self.flip else "")


def views_of(mode: TTA | str) -> list[View]:
    """The views of ``mode``, the unchanged image first."""
    if mode not in MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; use one of {', '.join(MODES)}")
    corners: list[str | None] = [None] + (list(CORNERS) if mode == "hflip+crops" else [])
    flips = [False, True] if mode != "none" else [False]
    return [View(corner, flip) for corner in corners for flip in flips]


class TestViews:
    """The views of one ``evaluation.tta`` mode, applied to whole normalised batches (N×3×H×W
    floats) on their device; each view keeps the batch's size and memory format."""

    __test__ = False  # not a pytest class, despite its name

    def __init__(self, mode: TTA | str) -> None:
        self.mode = mode
        self.views = views_of(mode)

    def __len__(self) -> int:
        return len(self.views)

    def describe(self) -> str:
        return f"{self.mode} ({MODES[self.mode]})"

    def apply(self, pixels: torch.Tensor, view: View) -> torch.Tensor:
        """``view`` of every image of ``pixels``: one crop box for the whole batch (the images
        of a batch have one size), so each view is a handful of batched ops."""
        from torchvision.transforms.v2 import functional as F

        out = pixels
        if view.corner is not None:
            height, width = pixels.shape[-2:]
            h, w = crop_size(height, width)
            top = 0 if view.corner.startswith("top") else height - h
            left = 0 if view.corner.endswith("left") else width - w
            # Bilinear, as the processors and the training crops resize; antialiasing does
            # nothing when enlarging.
            out = F.resized_crop(out, top, left, h, w, [height, width], antialias=True)
        if view.flip:
            out = F.horizontal_flip(out)
        if pixels.is_contiguous(memory_format=torch.channels_last) and not pixels.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def __iter__(self):
        return iter(self.views)


def crop_size(height: int, width: int) -> tuple[int, int]:
    """The corner crops' (height, width) for an input of ``height`` × ``width``."""
    return max(1, round(height * CROP_FRACTION)), max(1, round(width * CROP_FRACTION))
