"""Data: load a labelled image set with `datasets`, split it honestly, decode it once.

The path, a module per step:
1. ``sources.load_raw``: a Hub id, a local folder (image folder or Hub layout), data files,
   or ``builtin:digits`` → a ``DatasetDict``.
2. ``columns.find_columns`` / ``encode_labels``: the image column (``Image`` feature) and
   the label column (``ClassLabel``, or strings turned into classes); for multi-label data
   (``data.task``, or found by ``is_multi_label_column``: lists, or text with the separator)
   ``encode_label_sets`` makes it ``Sequence(ClassLabel)`` in every split (``multi_label``
   is the contract every stage shares).
3. ``splits.make_splits``: train, a stratified seeded validation piece of train (for
   per-epoch scores and model selection), and the eval split (reported once at the end).
   Pure functions of the labels and the seed, so identical on every process and every re-run;
   ``stratify``: the same for multi-label data (iterative stratification, subsets that keep
   every class).
4. ``decode.decode``: one batched ``datasets.map`` pass turns every image into a uint8
   tensor of the model's input size, exactly as the model's image processor would (EXIF
   rotation first, any mode to RGB, bad files set aside, not fatal: ``finetune.utils.images``), or keeps
   it at its own size when a split's images all share one smaller size;
   fingerprinted so a re-run reuses the cache; channels-last for a split that is randomly
   cropped. ``decode_plan``: its workers, batches and memory budget, and the pieces a
   stopped run keeps; ``cache_store``: the index of decode caches that ``finetune cache``
   lists and removes. ``rows.FastRows`` gathers a batch from the memory-mapped cache in one copy per
   image (its labels: class indices, or multi-hot float rows for multi-label data).
5. ``transforms.BatchTransform``: the processor's resize for splits stored small
   (``resize.ProcessorResize``), augmentation (crop, flip, an automatic policy, random
   erasing) and normalisation of whole batches on the training device with
   ``torchvision.transforms.v2`` — no per-image PIL work in the training loop.
6. ``views.TestViews``: the test-time views of a normalised batch (mirror image, corner
   crops), made on its device, for ``evaluation.tta``.

Beside the path, ``signatures.signatures``: each decoded image's pixel hash and thumbnail,
for finding duplicates.

Everything the other steps use is importable from here (``from finetune import data``).
"""

from finetune.data.cache_store import Owner as CacheOwner
from finetune.data.columns import (
    column,
    encode_label_sets,
    encode_labels,
    find_columns,
    is_multi_label_column,
    label_pairs,
    label_summary,
    map_to_model_classes,
)
from finetune.data.decode import (
    HWC_COLUMN,
    Decoded,
    Decoder,
    SizeChanged,
    decode,
    image_size,
    output_size,
    pixel_column,
    processor_normalization,
)
from finetune.data.resize import ProcessorResize
from finetune.data.rows import FastRows, RowBatch, collate, image_sources, split_rows
from finetune.data.signatures import Signatures, signatures
from finetune.data.sources import IMAGE_EXTENSIONS, DataError, count_junk, load_raw
from finetune.data.splits import Splits, balanced_sample, empty_class_reason, make_splits, stratified_sample
from finetune.data.transforms import BatchTransform
from finetune.data.views import TestViews
from finetune.utils.images import JUNK_DIRS, JUNK_FILES, image_source, is_junk, open_image, to_rgb

__all__ = [
    "BatchTransform",
    "CacheOwner",
    "DataError",
    "Decoded",
    "Decoder",
    "FastRows",
    "HWC_COLUMN",
    "IMAGE_EXTENSIONS",
    "JUNK_DIRS",
    "JUNK_FILES",
    "ProcessorResize",
    "RowBatch",
    "Signatures",
    "SizeChanged",
    "Splits",
    "TestViews",
    "balanced_sample",
    "collate",
    "column",
    "count_junk",
    "decode",
    "empty_class_reason",
    "encode_label_sets",
    "encode_labels",
    "find_columns",
    "image_size",
    "image_source",
    "image_sources",
    "is_junk",
    "is_multi_label_column",
    "label_pairs",
    "label_summary",
    "load_raw",
    "make_splits",
    "map_to_model_classes",
    "open_image",
    "output_size",
    "pixel_column",
    "processor_normalization",
    "signatures",
    "split_rows",
    "stratified_sample",
    "to_rgb",
]
