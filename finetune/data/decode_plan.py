"""How the decode pass is run: its workers, its batches and the memory they hold, and the pieces a stopped run keeps, sized from a sample of image headers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: The decoded full-resolution images the decode pass holds at once, all its workers together
#: (bytes). Each worker has its share and sends what it holds through the image processor
#: (which shrinks it to the model's size) before it would hold more; so a folder of camera
#: photos decodes in this budget, beside the model and the system, on a laptop (sizes and
#: the peaks: bench/README.md).
DECODE_MEMORY = 2 * 1024**3
#: The image processors keep a copy of each image they are given (a numpy array or a tensor
#: of the whole call's images) beside the decoded one, and one more of the image being
#: resized: an image of B bytes costs about this many times B while it is processed.
PROCESSOR_COPIES = 3
#: The most images in one ``datasets.map`` batch (fewer when the images are large).
MAX_BATCH = 64
#: The source pixels of one piece: the pass is mapped, and its output cached, a piece at a
#: time, so a stopped run keeps every piece that was finished (and, with several workers,
#: each worker's finished share of a piece) and a rerun decodes only the rest. About ten
#: seconds of one core's decoding; a piece costs a worker pool's start (well under a second).
PIECE_PIXELS = 1_000_000_000
#: The fewest images in a piece, so that several workers each have some.
MIN_PIECE = 64
#: A split smaller than this is decoded in the main process: starting workers costs more.
WORKERS_FROM = 4000


@dataclass(frozen=True)
class Plan:
    """How one split is decoded."""

    #: ``num_proc`` for ``datasets.map`` (None: in this process).
    workers: int | None
    #: Images per map batch.
    batch_size: int
    #: Decoded bytes a worker holds before its images go through the processor.
    hold_bytes: int
    #: [start, stop) rows of each piece, in order; one piece: the whole split at once.
    pieces: list[tuple[int, int]]

    def describe(self) -> str:
        workers = f"{self.workers} worker processes" if self.workers else "this process"
        pieces = f", in {len(self.pieces)} pieces cached as they finish" if len(self.pieces) > 1 else ""
        return (
            f"{workers}, batches of up to {self.batch_size} image{'s' if self.batch_size != 1 else ''}, "
            f"{self.hold_bytes * (self.workers or 1) / 1e9:.1f} GB of decoded images held at most{pieces}"
        )


def image_bytes(size: tuple[int, int]) -> int:
    """Bytes of one decoded RGB image of (height, width)."""
    return 3 * size[0] * size[1]


def plan(
    sizes: list[tuple[int, int]], images: int, workers: int | None, chunked: bool = True, memory: int | None = None
) -> Plan:
    """The plan for a split of ``images`` whose sampled headers gave ``sizes`` (height,
    width); ``workers``: the recipe's ``data.preprocessing_num_workers`` (None: automatic,
    several only for large splits). ``chunked``: the split's output goes to files, so
    pieces keep what was decoded (an in-memory split is one piece). ``memory``: the budget
    (None: :data:`DECODE_MEMORY`).

    Fewer workers than asked when one image, with the processor's copies of it, would not
    fit in a worker's share of ``memory`` (the log says so)."""
    memory = DECODE_MEMORY if memory is None else memory
    largest = max((h * w for h, w in sizes), default=1)
    mean = max(1, sum(h * w for h, w in sizes) // len(sizes)) if sizes else 1
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if images >= WORKERS_FROM else 1
    footprint = 3 * largest * PROCESSOR_COPIES
    fit = max(1, memory // footprint)
    if workers > fit:
        logger.info(
            "data: decoding with %d worker process(es) instead of %d: images of up to %.0f megapixels need "
            "%.2f GB each while they are resized, and the decode pass holds %.1f GB at most",
            fit, workers, largest / 1e6, footprint / 1e9, memory / 1e9,
        )
        workers = fit
    workers = max(1, min(workers, images)) if images else 1
    hold = memory // workers
    batch = int(max(1, min(MAX_BATCH, hold // footprint)))
    pieces = [(0, images)]
    if chunked and images:
        size = max(MIN_PIECE, PIECE_PIXELS // mean)
        pieces = [(start, min(start + size, images)) for start in range(0, images, size)]
    return Plan(workers if workers > 1 else None, batch, hold, pieces)
