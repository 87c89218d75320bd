"""What tells two images' pixels apart: an exact hash of the decoded pixels, and a small thumbnail that survives re-encoding and resizing.

Both come from one read of the decode cache (``decode``), and describe the pixels as the
model gets them: at the model's input size, a split stored smaller (``decode`` keeps a
split of small images at their own size) resized on the way as the image processor does,
so that a copy in a split stored at another size still matches.

- The hash (16-byte BLAKE2b of the C×H×W uint8 pixels and their shape) is equal for equal
  pixels: the same image twice, or a lossless copy under another name.
- The thumbnail is the image shrunk to :data:`THUMBNAIL`×:data:`THUMBNAIL` pixels
  (antialiased), each channel's mean subtracted, as one vector of unit length: the cosine of two
  thumbnails is near 1 for a copy saved again as a JPEG, or resized a little, where a
  backbone's features of a small image may change more than between two distinct photos
  of one class (the threshold's study in the inspect manual). A flat image has a zero
  thumbnail, similar to nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from finetune.data.decode import output_size
from finetune.data.resize import ProcessorResize
from finetune.data.rows import FastRows
from finetune.utils import progress

#: The thumbnail's side in pixels: 16×16×3 = 768 numbers per image.
THUMBNAIL = 16
#: Rows read per batch from the decode cache.
BATCH = 256


@dataclass
class Signatures:
    """Per row of a decoded split, in order: its pixels' hash, and its thumbnail (rows × 768, unit length)."""

    hashes: list[bytes]
    thumbnails: torch.Tensor


def thumbnails_of(pixels: torch.Tensor) -> torch.Tensor:
    """N×3×H×W uint8 pixels → N×(3·16·16) float32 thumbnails, each channel mean-free, of unit length."""
    x = pixels.float()
    small = torch.nn.functional.interpolate(x, size=(THUMBNAIL, THUMBNAIL), mode="bilinear", antialias=True, align_corners=False)
    # Each channel's mean taken out: a colour cast that two distinct images share (the same
    # backdrop, a class's colour) does not make them alike; a recoloured copy still is.
    flat = (small - small.mean(dim=(2, 3), keepdim=True)).flatten(1)
    norm = flat.norm(dim=1, keepdim=True)
    # Below a grey level's variation over the whole image: a flat image, similar to nothing.
    return torch.where(norm > 1e-3, flat / norm.clamp_min(1e-12), torch.zeros_like(flat))


def signatures(dataset, processor=None, desc: str = "pixel signatures", args=None) -> Signatures:
    """Hashes and thumbnails of every row of a decoded split, at ``processor``'s output size
    (None: as stored), with a progress bar (``args``: a run's TrainingArguments, whose
    ``disable_tqdm`` it follows, or None)."""
    rows = FastRows(dataset)
    resize = ProcessorResize(processor) if processor is not None else None
    size = tuple(output_size(processor)) if processor is not None else None
    hashes: list[bytes] = []
    thumbs = []
    bar = progress.bar(args, total=len(rows), desc=desc)
    for start in range(0, len(rows), BATCH):
        batch = rows.__getitems__(list(range(start, min(start + BATCH, len(rows)))))
        pixels = batch.collated["pixel_values"]
        if resize is not None and tuple(pixels.shape[-2:]) != size:
            pixels = resize(pixels)  # on the CPU, the processor's very bytes (finetune.data.resize)
        pixels = pixels.contiguous()  # N×3×H×W, whatever the stored layout
        shape = repr(tuple(pixels.shape[1:])).encode()
        for image in np.ascontiguousarray(pixels.numpy()):
            digest = hashlib.blake2b(image.tobytes(), digest_size=16)
            digest.update(shape)
            hashes.append(digest.digest())
        with torch.no_grad():
            thumbs.append(thumbnails_of(pixels))
        bar.update(len(pixels))
    bar.close()
    dim = 3 * THUMBNAIL * THUMBNAIL
    return Signatures(hashes, torch.cat(thumbs) if thumbs else torch.zeros(0, dim))
