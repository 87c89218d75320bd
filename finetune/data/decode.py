"""The one cached decode pass: every image upright RGB uint8, at the model's size or, when smaller, its own."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from finetune.data import cache_store, decode_plan
from finetune.data.cache_store import Owner
from finetune.data.decode_plan import PROCESSOR_COPIES
from finetune.data.resize import ProcessorResize, before_to_tensor
from finetune.utils import compat
from finetune.utils.errors import first_line
from finetune.utils.images import image_source, open_image, to_rgb, upright_size

logger = logging.getLogger(__name__)

#: Bump to invalidate decode caches when the decode function changes.
_DECODE_VERSION = "2"
#: The decoded column of a split stored channels-last (see ``decode``): each image H×W×3,
#: kept as an ``Array2D`` of H rows of W×3 bytes. As an ``Array3D`` of H×W×3, Arrow would
#: store an offset per 3-byte pixel, more than doubling the cache on disk. The usual column
#: is ``pixel_values`` (``Array3D`` 3×H×W). Two names, so no reader takes one for the other.
HWC_COLUMN = "pixels_hwc"


def processor_normalization(processor) -> tuple[list[float], list[float]]:
    """Mean and std the processor normalises with (HF processors and timm's wrapper)."""
    config = getattr(processor, "data_config", None)
    if config is not None:  # TimmWrapperImageProcessor
        return list(config["mean"]), list(config["std"])
    if getattr(processor, "do_normalize", True) is False:
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    mean, std = processor.image_mean, processor.image_std
    mean = [mean] * 3 if isinstance(mean, (int, float)) else list(mean)
    std = [std] * 3 if isinstance(std, (int, float)) else list(std)
    return mean, std


def _rescale_factor(processor) -> float:
    if getattr(processor, "data_config", None) is not None:
        return 1 / 255
    return processor.rescale_factor if getattr(processor, "do_rescale", True) else 1.0


class Decoder:
    """The body of the one-off ``datasets.map`` pass: image → uint8 CHW of the model size
    (or of its own size, ``small_size``).

    Each image goes through the model's own image processor, so the cached pixels are
    exactly what the processor (and so ``pipeline()``) feeds the model, to the rounding of
    uint8. Two ways, the same bytes:

    - ``uint8``: the processor's own resize and crop with its float steps turned off
      (``do_rescale=False, do_normalize=False``; for a timm processor, its transforms up
      to ``ToTensor``). Much faster: the float pass that is then undone makes and
      faults in three batch-sized float tensors.
    - ``float``: the processor as it is, with the normalisation undone and rounded.

    The ``uint8`` way is taken only when it gives exactly the ``float`` way's bytes on a
    noise image at construction, so a processor with other steps after its resize falls
    back to the float way instead of silently caching different pixels.

    ``channels_last`` stores each image as H×(W×3) in column :data:`HWC_COLUMN` (see ``decode``).
    ``small_size`` (height, width): store each image as it is, upright RGB, without the
    processor; every image must have that size (see ``decode``), else :class:`SizeChanged`.
    """

    def __init__(
        self,
        processor,
        image_column: str,
        label_column: str,
        channels_last: bool = False,
        small_size: tuple[int, int] | None = None,
    ) -> None:
        self.processor = processor
        self.image_column = image_column
        self.label_column = label_column
        self.channels_last = channels_last
        self.small_size = small_size
        self.column = HWC_COLUMN if channels_last else "pixel_values"
        mean, std = processor_normalization(processor)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.scale = _rescale_factor(processor)
        self.way = "uint8" if self._uint8_matches() else "float"
        #: (height, width) of the processor's output: the model's input size.
        self.model_size = output_size(processor, self)
        #: Decoded bytes held before the images so far go through the processor (None: a
        #: batch at once); see :mod:`finetune.data.decode_plan`.
        self.hold_bytes: int | None = None
        self._pid = os.getpid()

    def pixels(self, images: list) -> torch.Tensor:
        return self._uint8(images) if self.way == "uint8" else self._float(images)

    def _float(self, images: list) -> torch.Tensor:
        out = self.processor(images=images, return_tensors="pt")["pixel_values"].float()
        out = (out * self.std + self.mean) / self.scale
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def _uint8(self, images: list) -> torch.Tensor:
        if getattr(self.processor, "data_config", None) is not None:  # timm: its torchvision transforms
            head = before_to_tensor(getattr(self.processor, "val_transforms", None))
            if head is None:
                raise ValueError("the timm processor's transforms do not end in ToTensor + Normalize")
            out = torch.stack([torch.from_numpy(np.array(head(im), dtype=np.uint8)).permute(2, 0, 1) for im in images])
        else:
            out = self.processor(images=images, return_tensors="pt", do_rescale=False, do_normalize=False)
            out = torch.as_tensor(out["pixel_values"])
        if out.is_floating_point():  # a PIL/numpy backend keeps the integer values in floats
            out = out.round_().clamp_(0, 255)
        return out.to(torch.uint8).contiguous()

    def _uint8_matches(self) -> bool:
        from PIL import Image

        noise = np.random.default_rng(0).integers(0, 256, (61, 97, 3), dtype=np.uint8)
        probe = [Image.fromarray(noise)]
        try:
            fast = self._uint8(probe)
        except Exception:  # noqa: BLE001 - a processor without this way keeps the float way
            return False
        slow = self._float(probe)
        return fast.shape == slow.shape and torch.equal(fast, slow)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if os.getpid() != self._pid:
            # A map worker forked from a process whose torch ops had started OpenMP threads:
            # the child's first multi-threaded op waits forever on them (seen in torch.stack
            # inside the processor, datasets 5.2 / torch 2.14). One thread per worker also
            # keeps num_proc workers from oversubscribing the cores.
            torch.set_num_threads(1)
        values = batch[self.image_column]
        out_pixels: list = [None] * len(values)
        bad_reason = [""] * len(values)
        # Decoded images wait here, with their rows, until they go through the processor
        # together: all of the batch at once, or, should that hold more than hold_bytes
        # (large photos), the ones so far. The processor treats each image alone, so the
        # bytes are the same either way.
        waiting: list = []
        held = 0
        for row, value in enumerate(values):
            try:
                image = to_rgb(open_image(value))
            except Exception as err:  # noqa: BLE001 - every decode failure is reported, none is fatal here
                bad_reason[row] = f"{type(err).__name__}: {first_line(err)}"
                continue
            size = 3 * image.width * image.height
            if waiting and self.hold_bytes is not None and held + size > self.hold_bytes / PROCESSOR_COPIES:
                self._store(waiting, out_pixels)
                waiting, held = [], 0
            waiting.append((row, image))
            held += size
        if waiting:
            self._store(waiting, out_pixels)
        return {
            self.column: out_pixels,
            "labels": batch[self.label_column],
            "bad_reason": bad_reason,
            "source": [image_source(v) for v in batch[self.image_column]],
        }

    def _store(self, waiting: list, out_pixels: list) -> None:
        """The stored bytes of the ``waiting`` (row, image) pairs, into their rows of ``out_pixels``."""
        pixels = self._stored([image for _, image in waiting])
        for k, (row, _) in enumerate(waiting):
            out_pixels[row] = pixels[k]

    def _stored(self, images: list) -> np.ndarray:
        """The bytes stored for ``images``: N×3×H×W, or N×H×(W×3) channels-last."""
        if self.small_size is None:
            pixels = self.pixels(images).numpy()
            if not self.channels_last:
                return pixels
            n, c, h, w = pixels.shape
            return torch.from_numpy(pixels).permute(0, 2, 3, 1).contiguous().view(n, h, w * c).numpy()
        h, w = self.small_size
        for image in images:
            if image.size != (w, h):
                raise SizeChanged(f"an image of {image.size[1]}×{image.size[0]} among images of {h}×{w}")
        hwc = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
        if self.channels_last:
            return hwc.reshape(len(images), h, w * 3)
        return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))

    def output_shape(self) -> tuple[int, ...]:
        """The stored shape of one image: (3, H, W), or (H, W×3) channels-last."""
        h, w = self.small_size or self.model_size
        return (h, w * 3) if self.channels_last else (3, h, w)


class SizeChanged(Exception):
    """An image decoded to another size than the one its split is stored at."""


def output_size(processor, decoder: Decoder | None = None) -> tuple[int, int]:
    """(height, width) of what ``processor`` gives the model (for an image of any size)."""
    from PIL import Image

    pixels = decoder.pixels if decoder is not None else Decoder(processor, "", "").pixels
    return tuple(pixels([Image.new("RGB", (97, 61))]).shape[-2:])


#: Images whose headers ``decode`` reads to choose how a split is stored.
SIZE_SAMPLES = 256


def sampled_sizes(dataset, image_column: str) -> list[tuple[int, int]]:
    """(height, width) of up to :data:`SIZE_SAMPLES` images spread over the split, from their
    headers alone (a full scan of a large split, CIFAR-10's 50,000 images, would cost every
    run seconds, cache or not); unreadable files are left out (the decode pass sets them aside)."""
    n = len(dataset)
    if n == 0:
        return []
    rows = sorted({int(i) for i in np.linspace(0, n - 1, min(n, SIZE_SAMPLES))})
    sizes = []
    for value in dataset.select(rows).select_columns([image_column])[image_column]:
        try:
            sizes.append(upright_size(value))
        except Exception:  # noqa: BLE001 - the decode pass sets unreadable files aside
            continue
    return sizes


def sampled_small_size(
    dataset, image_column: str, limit: tuple[int, int], sizes: list[tuple[int, int]] | None = None
) -> tuple[int, int] | None:
    """The (height, width) that the sampled images (:func:`sampled_sizes`, or ``sizes`` when
    given) share, when it holds fewer pixels than ``limit``; else None. An image of another
    size that the sample missed is caught by the decode pass (:class:`SizeChanged`)."""
    sizes = sampled_sizes(dataset, image_column) if sizes is None else sizes
    if not sizes or len(set(sizes)) > 1:
        return None
    (h, w), = set(sizes)
    return (h, w) if h * w < limit[0] * limit[1] else None


@dataclass
class Decoded:
    dataset: Any  # columns: pixel_values (uint8 3×H×W) or pixels_hwc (uint8 H×(W×3)), labels
    bad: list[dict[str, str]]  # {"path", "reason"}


def decode(
    dataset,
    processor,
    image_column: str,
    label_column: str,
    num_proc: int | None,
    desc: str,
    channels_last: bool = False,
    owner: Owner | None = None,
) -> Decoded:
    """Decode, fix and (when larger than the model's input) resize every image once: a
    fingerprinted, cached ``datasets.map``.

    The cache holds each image at the smaller of its own size and the model's. A split whose
    images all have one size with fewer pixels than the model's input (CIFAR-10's 32×32 for a
    224-px ViT) is stored as it is, upright RGB, and ``BatchTransform`` applies the
    processor's resize per batch on the training device (:class:`ProcessorResize`): 3 KB an
    image instead of 150 KB. Every other split is stored through the processor at the
    model's size, so large photos are shrunk once, as before. The size is read from a sample
    of headers (:func:`sampled_small_size`); should the pass meet an image of another size,
    the split is decoded again at the model's size. One size per split, because an
    Arrow column of fixed shape is what lets ``FastRows`` gather a batch in one copy per
    image; a split of mixed small sizes is stored at the model's size rather than resized to
    a common one, which would put a second resize between the image and what the processor
    gives the model. Likewise a processor whose resize the training device cannot repeat
    (:meth:`ProcessorResize.matches`) keeps the model-size cache.

    ``channels_last`` stores each image's bytes in H×W×3 order (column :data:`HWC_COLUMN`); :class:`FastRows`
    still gives N×3×H×W batches, as views with channels-last strides. For a split that
    will be randomly cropped: torch's uint8 antialiased resize works on channels-last
    pixels, and given the usual layout it repacks its input and output, which costs more
    than the resize itself.

    How the pass runs (:mod:`finetune.data.decode_plan`, from the sampled headers): its
    workers (``num_proc``; None: automatic), batches and the decoded bytes each worker holds
    within a fixed memory budget, and the pieces it is mapped in, each cached as it
    finishes, so that a stopped run keeps what was decoded. ``owner``: the data set and run
    the split is decoded for, noted in the index of decode caches
    (:mod:`finetune.data.cache_store`, which ``finetune cache`` lists and removes).
    """
    from datasets import Image

    # Undecoded so that one corrupt file is a row to set aside, not an exception that ends
    # iteration of the whole split (huggingface/datasets#6470), so that we apply EXIF
    # rotation, and so that the size sample reads headers only.
    if isinstance(dataset.features[image_column], Image):
        dataset = dataset.cast_column(image_column, Image(decode=False))
    decoder = Decoder(processor, image_column, label_column, channels_last)
    sizes = sampled_sizes(dataset, image_column)
    small = sampled_small_size(dataset, image_column, decoder.model_size, sizes)
    if small is not None and ProcessorResize(processor).matches(small, decoder.pixels):
        decoder.small_size = small
    plan = decode_plan.plan(sizes, len(dataset), num_proc, chunked=bool(dataset.cache_files))
    decoder.hold_bytes = plan.hold_bytes
    logger.info("data: %s: %d images, %s", desc, len(dataset), plan.describe())
    entry = _entry(dataset, decoder, processor, plan, desc, owner)
    try:
        mapped = _map(dataset, decoder, processor, plan, desc)
    except SizeChanged:  # an image of another size than the sample's: this split is stored at the model's size
        if entry is not None:  # the pieces stored small so far: of no use to any run
            cache_store.remove(entry)
        decoder.small_size = None
        _entry(dataset, decoder, processor, plan, desc, owner)
        mapped = _map(dataset, decoder, processor, plan, desc)
    # Only the two small text columns are read here: a row read would also decode pixels.
    reasons = mapped["bad_reason"][:]
    bad_idx = [i for i, r in enumerate(reasons) if r]
    sources = mapped.select(bad_idx)["source"][:] if bad_idx else []
    bad = [{"path": path, "reason": reasons[i]} for i, path in zip(bad_idx, sources)]
    if bad_idx:
        keep = np.setdiff1d(np.arange(len(mapped)), bad_idx)
        mapped = mapped.select(keep)
    mapped = mapped.remove_columns(["bad_reason", "source"])
    # Both datasets formatters widen the uint8 pixels to int64 (eight bytes for each): the Trainer
    # reads batches through FastRows, which keeps them uint8; BatchTransform takes either.
    mapped.set_format("numpy", columns=[decoder.column, "labels"])
    _log_cache(mapped, decoder, desc)
    return Decoded(mapped, bad)


def _fingerprints(dataset, decoder: Decoder, processor, plan: decode_plan.Plan) -> tuple[str, list[str]]:
    """The cache's key for the split as ``decoder`` stores it, and the fingerprint of each
    piece of ``plan`` (a split of one piece keeps the fingerprint it always had)."""
    small = decoder.small_size
    base = "|".join(
        [compat.dataset_fingerprint(dataset), processor.to_json_string(), decoder.image_column]
        + [decoder.label_column, _DECODE_VERSION]
        + (["hwc"] if decoder.channels_last else [])
        + ([f"small{small[0]}x{small[1]}"] if small else [])
    )
    key = hashlib.sha256(base.encode()).hexdigest()[:32]
    if plan.pieces == [(0, len(dataset))]:
        return key, [key]
    return key, [hashlib.sha256(f"{base}|piece{a}-{b}".encode()).hexdigest()[:32] for a, b in plan.pieces]


def _entry(dataset, decoder: Decoder, processor, plan: decode_plan.Plan, desc: str, owner: Owner | None):
    """The split's entry in the index of decode caches (written now, when ``owner`` is given
    and the split is cached in files), or None for an in-memory split."""
    if not dataset.cache_files:
        return None
    key, fingerprints = _fingerprints(dataset, decoder, processor, plan)
    folder = os.path.dirname(dataset.cache_files[0]["filename"])
    if owner is not None:
        problem = cache_store.record(key, folder, fingerprints, owner, desc.removeprefix("decoding "), len(dataset))
        if problem is not None:
            logger.warning("data: the index of decode caches could not be written (%s)", first_line(problem))
    return cache_store.Entry(key, folder, fingerprints, owner.dataset if owner else "", desc.removeprefix("decoding "))


def _map(dataset, decoder: Decoder, processor, plan: decode_plan.Plan, desc: str):
    """The split through ``decoder``, a piece of ``plan`` at a time, each piece cached under a
    fingerprint of its own (:func:`_fingerprints`)."""
    from datasets import Array2D, Array3D, ClassLabel, Features, LargeList, List, Value, concatenate_datasets

    pixels = (Array2D if decoder.channels_last else Array3D)(shape=decoder.output_shape(), dtype="uint8")
    # A multi-label split's labels stay a list of class indices per image (rows.FastRows
    # makes the multi-hot rows of a batch from it).
    given = dataset.features[decoder.label_column]
    listed = isinstance(given, (List, LargeList))
    features = Features(
        {
            decoder.column: pixels,
            "labels": (given if isinstance(getattr(given, "feature", None), ClassLabel) else List(Value("int64")))
            if listed else Value("int64"),
            "bad_reason": Value("string"),
            "source": Value("string"),
        }
    )
    _, fingerprints = _fingerprints(dataset, decoder, processor, plan)
    done = []
    for (start, stop), fingerprint in zip(plan.pieces, fingerprints):
        whole = (start, stop) == (0, len(dataset))
        workers = min(plan.workers or 1, stop - start)
        done.append(
            (dataset if whole else dataset.select(range(start, stop))).map(
                decoder,
                batched=True,
                batch_size=plan.batch_size,
                remove_columns=dataset.column_names,
                features=features,
                num_proc=workers if workers > 1 else None,
                new_fingerprint=fingerprint,
                desc=desc if whole else f"{desc} ({start}-{stop} of {len(dataset)})",
            )
        )
    return done[0] if len(done) == 1 else concatenate_datasets(done)


def _log_cache(dataset, decoder: Decoder, desc: str) -> None:
    """One line: the size of a split's decode cache on disk, where it is, and its image size."""
    files = sorted({f["filename"] for f in dataset.cache_files})
    if files:
        size, where = sum(os.path.getsize(f) for f in files if os.path.exists(f)), os.path.dirname(files[0])
    else:  # an in-memory data set is mapped in memory
        size, where = dataset.data.nbytes, "memory"
    (h, w), (mh, mw) = decoder.small_size or decoder.model_size, decoder.model_size
    stored = (
        f"images at their own {h}×{w}; the processor's resize to {mh}×{mw} runs per batch on the training device"
        if decoder.small_size
        else f"images at the model's {mh}×{mw}"
    )
    logger.info("data: %s: decode cache %s in %s (%d %s)", desc, _megabytes(size), where, len(dataset), stored)


def _megabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def pixel_column(dataset) -> str | None:
    """The decoded pixel column of a split (``pixel_values`` or :data:`HWC_COLUMN`), or None."""
    from datasets import Array2D, Array3D

    features = getattr(dataset, "features", None) or {}
    if isinstance(features.get("pixel_values"), Array3D):
        return "pixel_values"
    return HWC_COLUMN if isinstance(features.get(HWC_COLUMN), Array2D) else None


def image_size(dataset) -> tuple[int, int]:
    """(height, width) of a decoded split's images as stored: the model's input size, or their
    own when ``decode`` kept them smaller (``BatchTransform`` resizes those per batch)."""
    column = pixel_column(dataset)
    if column is None:
        raise ValueError(f"not a decoded split: no 'pixel_values' or '{HWC_COLUMN}' column")
    shape = tuple(dataset.features[column].shape)
    return (shape[0], shape[1] // 3) if column == HWC_COLUMN else shape[1:]

