"""Data: load a labelled image set with `datasets`, split it honestly, decode it once.

The path:
1. ``load_raw``: a Hub id, a local folder (image folder or Hub layout), data files, or
   ``builtin:digits`` → a ``DatasetDict``.
2. ``find_columns`` / ``encode_labels``: the image column (``Image`` feature) and the label
   column (``ClassLabel``, or strings turned into classes).
3. ``make_splits``: train, a stratified seeded validation piece of train (for per-epoch
   scores and model selection), and the eval split (reported once at the end). Pure
   functions of the labels and the seed, so identical on every process and every re-run.
4. ``decode``: one batched ``datasets.map`` pass turns every image into a uint8 tensor of
   the model's input size, exactly as the model's image processor would (EXIF rotation
   first, any mode to RGB, bad files set aside, not fatal), fingerprinted so a re-run
   reuses the cache; channels-last for a split that is randomly cropped. ``FastRows``
   gathers a batch from the memory-mapped cache in one copy per image.
5. ``BatchTransform``: augmentation (crop, flip, an automatic policy, random erasing) and
   normalisation of whole batches on the training device with ``torchvision.transforms.v2``
   — no per-image PIL work in the training loop.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import builtin
from .recipe import AugmentConfig, DataConfig
from .util import first_line

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_LABEL_NAMES = ("label", "labels", "class", "target", "category", "fine_label", "coarse_label")
_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
#: Bump to invalidate decode caches when the decode function changes.
_DECODE_VERSION = "1"
#: The decoded column of a split stored channels-last (see ``decode``): each image H×W×3,
#: kept as an ``Array2D`` of H rows of W×3 bytes. As an ``Array3D`` of H×W×3, Arrow would
#: store an offset per 3-byte pixel, more than doubling the cache on disk. The usual column
#: is ``pixel_values`` (``Array3D`` 3×H×W). Two names, so no reader takes one for the other.
HWC_COLUMN = "pixels_hwc"


class DataError(ValueError):
    """A problem with the data the recipe names; one line, with the fix."""


# ----------------------------------------------------------------------------- loading


def load_raw(cfg: DataConfig):
    """The data set named by ``data.dataset`` as a ``DatasetDict``."""
    from datasets import load_dataset

    name = cfg.dataset
    if builtin.is_builtin(name):
        try:
            return builtin.load_dataset(name)
        except ValueError as err:
            raise DataError(f"data.dataset: {err}") from None
    path = Path(name).expanduser()
    try:
        if path.is_file() or any(name.endswith(ext) for ext in _FILE_BUILDERS):
            ext = path.suffix.lower()
            if ext not in _FILE_BUILDERS:
                raise DataError(
                    f"data.dataset: '{name}' is a file of unknown type; use parquet, CSV or JSON-lines "
                    "(or a folder)"
                )
            if not path.is_file():
                raise DataError(f"data.dataset: no such file '{name}'; check the path")
            ds = load_dataset(_FILE_BUILDERS[ext], data_files={"train": str(path)})
            return _resolve_relative_image_paths(ds, path.parent)
        if path.is_dir():
            return load_dataset(str(path), cfg.config)
        if name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]:
            raise DataError(f"data.dataset: no such folder or file '{name}'; check the path")
        return load_dataset(name, cfg.config, revision=cfg.revision)
    except DataError:
        raise
    except FileNotFoundError as err:
        raise DataError(f"data.dataset: cannot find '{name}' ({first_line(err)}); check the id or path") from None
    except (ConnectionError, OSError) as err:
        raise DataError(
            f"data.dataset: cannot load '{name}' ({first_line(err)}); check the id, the network, or use a local copy"
        ) from None
    except ValueError as err:
        raise DataError(f"data.dataset: cannot load '{name}': {first_line(err)}") from None


def _resolve_relative_image_paths(ds, base: Path):
    """Data files may list images by path relative to the file itself."""
    from datasets import Value

    for split in ds:
        for col, feature in ds[split].features.items():
            if isinstance(feature, Value) and feature.dtype in ("string", "large_string") and _looks_like_image_paths(ds[split][col][:5]):
                ds[split] = ds[split].map(
                    lambda row, c=col: {c: str(base / row[c]) if not os.path.isabs(row[c]) else row[c]},
                    desc=f"resolving {col} paths",
                )
    return ds


def _looks_like_image_paths(values: list[Any]) -> bool:
    return bool(values) and all(
        isinstance(v, str) and Path(v).suffix.lower() in IMAGE_EXTENSIONS for v in values
    )


#: Files and folders that operating systems, archivers and tools leave next to images.
JUNK_FILES = {".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", ".directory"}
JUNK_DIRS = {"__MACOSX", ".git", ".hg", ".svn", "__pycache__"}


def is_junk(name: str, folder: bool = False) -> bool:
    """Hidden entries (macOS's "._photo.jpg" AppleDouble companions among them) and the
    names above; `datasets`' image folder loader skips hidden files too."""
    return name.startswith(".") or (name in JUNK_DIRS if folder else name.lower() in JUNK_FILES)


def count_junk(root: str | Path) -> int:
    """How many junk files a local folder holds, for the data report (they are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return 0
    count = 0
    for folder, dirs, names in os.walk(root):
        inside_junk = any(is_junk(part, folder=True) for part in Path(folder).relative_to(root).parts)
        count += sum(1 for n in names if inside_junk or is_junk(n))
    return count


# ----------------------------------------------------------------------------- columns


def find_columns(dataset, cfg: DataConfig) -> tuple[str, str]:
    """The image and label columns: named in the recipe, else found from the features."""
    from datasets import ClassLabel, Image, Value

    features = dataset.features
    columns = list(features)

    def check(key: str, value: str | None) -> None:
        if value is not None and value not in features:
            raise DataError(f"data.{key}: no column '{value}' in the data; columns are: {', '.join(columns)}")

    check("image_column", cfg.image_column)
    check("label_column", cfg.label_column)
    image = cfg.image_column
    if image is None:
        found = [c for c, f in features.items() if isinstance(f, Image)]
        if not found:
            found = [
                c
                for c, f in features.items()
                if isinstance(f, Value) and f.dtype in ("string", "large_string") and _looks_like_image_paths(dataset[c][:5])
            ]
        if len(found) != 1:
            raise DataError(
                f"data.image_column: cannot tell which column holds the images "
                f"({'several candidates: ' + ', '.join(found) if found else 'none is an Image feature'}); "
                f"set data.image_column to one of: {', '.join(columns)}"
            )
        image = found[0]
    label = cfg.label_column
    if label is None:
        found = [c for c, f in features.items() if isinstance(f, ClassLabel) and c != image]
        if not found:
            found = [c for c in columns if c.lower() in _LABEL_NAMES and c != image]
        if not found and len(columns) == 2:
            found = [c for c in columns if c != image]  # the only other column
        if len(found) != 1:
            raise DataError(
                f"data.label_column: cannot tell which column holds the labels "
                f"({'several candidates: ' + ', '.join(found) if found else 'no ClassLabel or label-like column'}); "
                f"set data.label_column to one of: {', '.join(c for c in columns if c != image)}"
            )
        label = found[0]
    if label == image:
        raise DataError("data.label_column and data.image_column name the same column; they must differ")
    return image, label


def column(dataset, name: str) -> list[Any]:
    """All values of one column as a list. ``dataset[name]`` is a lazy column in datasets 5,
    and ``np.asarray`` of it reads row by row (0.45 s for CIFAR-10's 50,000 labels, against
    4 ms for the slice)."""
    return dataset[name][:]


def encode_labels(train, others: dict[str, Any], label: str):
    """Make ``label`` a ClassLabel in train, and map every other split onto the same classes.

    Returns (train, others, class names). Fails when a class has no images or when another
    split holds classes that train does not (the model could never predict them).
    """
    from datasets import ClassLabel

    feature = train.features[label]
    if not isinstance(feature, ClassLabel):
        train = train.class_encode_column(label)
        feature = train.features[label]
    names: list[str] = list(feature.names)
    counts = np.bincount(np.asarray(column(train, label), dtype=np.int64), minlength=len(names))
    if len(names) < 2 or (counts > 0).sum() < 2:
        raise DataError(
            f"data.label_column: '{label}' has {int((counts > 0).sum())} class in the training split; "
            "classification needs at least 2"
        )
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"data: class(es) {', '.join(empty)} have no training images; add images or remove the class"
        )
    out = {}
    for split, ds in others.items():
        theirs = ds.features[label]
        if isinstance(theirs, ClassLabel):
            if list(theirs.names) == names:
                out[split] = ds
                continue
            values = {theirs.names[i] for i in set(column(ds, label))}
        else:
            values = {str(v) for v in set(column(ds, label))}
        unknown = sorted(values - set(names))
        if unknown:
            raise DataError(
                f"data: split '{split}' has classes that train does not: {', '.join(unknown[:10])}"
                f"{' …' if len(unknown) > 10 else ''}; fix the labels or drop those images"
            )
        if isinstance(theirs, ClassLabel):
            ds = ds.align_labels_with_mapping({n: i for i, n in enumerate(names)}, label)
        else:
            ds = ds.map(lambda row: {label: str(row[label])}).cast_column(label, ClassLabel(names=names))
        out[split] = ds
    return train, out, names


# ------------------------------------------------------------------------------ splits


def _per_class(labels: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Indices of each class, each list shuffled by ``rng`` (classes in sorted order)."""
    return {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices whose class shares follow those of ``labels`` (largest remainder)."""
    rng = np.random.default_rng(seed)
    groups = _per_class(labels, rng)
    n = min(n, len(labels))
    exact = {c: n * len(idx) / len(labels) for c, idx in groups.items()}
    take = {c: int(np.floor(v)) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (take[c] - exact[c], c))[: n - sum(take.values())]:
        take[c] += 1
    return np.sort(np.concatenate([groups[c][: take[c]] for c in groups]).astype(np.int64))


def balanced_sample(labels: np.ndarray, n: int | None, seed: int, per_class: int | None = None) -> np.ndarray:
    """Class-balanced indices: ``per_class`` of each class (k-shot), or ``n`` in total spread
    as evenly as the classes allow (a class with too few images gives its share to others)."""
    rng = np.random.default_rng(seed)
    groups = _per_class(labels, rng)
    if per_class is not None:
        take = {c: min(per_class, len(idx)) for c, idx in groups.items()}
    else:
        assert n is not None
        take = {c: 0 for c in groups}
        remaining = min(n, len(labels))
        open_classes = [c for c in groups]
        while remaining > 0 and open_classes:
            share, extra = divmod(remaining, len(open_classes))
            order = rng.permutation(len(open_classes))
            for rank, i in enumerate(order):
                c = open_classes[i]
                want = share + (1 if rank < extra else 0)
                got = min(want, len(groups[c]) - take[c])
                take[c] += got
                remaining -= got
            open_classes = [c for c in open_classes if take[c] < len(groups[c])]
    return np.sort(np.concatenate([groups[c][: take[c]] for c in groups]).astype(np.int64))


@dataclass
class Splits:
    train: Any
    validation: Any | None
    eval: Any
    #: Where the reported numbers come from, for the card: e.g. "test" or "validation piece of train".
    eval_name: str
    class_names: list[str]
    image_column: str
    label_column: str
    notes: list[str] = field(default_factory=list)


def make_splits(raw, cfg: DataConfig, seed: int) -> Splits:
    """Train / validation piece / eval split, seeded and stratified (see module docstring)."""
    available = list(raw)
    if cfg.train_split not in raw:
        raise DataError(
            f"data.train_split: '{cfg.train_split}' is not a split of '{cfg.dataset}'; it has: {', '.join(available)}"
        )
    if cfg.eval_split is not None and cfg.eval_split not in raw:
        raise DataError(
            f"data.eval_split: '{cfg.eval_split}' is not a split of '{cfg.dataset}' (it has: {', '.join(available)}); "
            "name one of those, or set data.eval_split to null to report on a held-out validation piece of train"
        )
    if cfg.eval_split == cfg.train_split:
        raise DataError(
            "data.eval_split names the training split: the reported score would be measured on training images; "
            "name another split, or set it to null to hold out a validation piece"
        )
    train = raw[cfg.train_split]
    image, label = find_columns(train, cfg)
    others = {cfg.eval_split: raw[cfg.eval_split]} if cfg.eval_split else {}
    for split, ds in others.items():
        missing = [c for c in (image, label) if c not in ds.column_names]
        if missing:
            raise DataError(f"data: split '{split}' lacks column(s) {', '.join(missing)} that train has")
    train, others, names = encode_labels(train, others, label)
    notes: list[str] = []

    labels = np.asarray(column(train, label), dtype=np.int64)
    all_idx = np.arange(len(labels))
    if cfg.samples_per_class is not None or cfg.max_train_samples is not None:
        chosen = balanced_sample(labels, cfg.max_train_samples, seed, per_class=cfg.samples_per_class)
        short = [
            names[c]
            for c in np.unique(labels)
            if cfg.samples_per_class is not None and (labels == c).sum() < cfg.samples_per_class
        ]
        if short:
            notes.append(f"fewer than {cfg.samples_per_class} images in class(es): {', '.join(short)}; all were used")
        rest = np.setdiff1d(all_idx, chosen)
        n_val = int(round(cfg.validation_fraction * len(chosen)))
        val_idx = rest[stratified_sample(labels[rest], n_val, seed + 1)] if n_val and len(rest) else rest[:0]
        train_idx = chosen
    else:
        n_val = int(round(cfg.validation_fraction * len(labels)))
        val_idx = stratified_sample(labels, n_val, seed + 1) if n_val else all_idx[:0]
        train_idx = np.setdiff1d(all_idx, val_idx)
    if cfg.validation_fraction > 0 and len(val_idx) == 0:
        raise DataError(
            "data.validation_fraction: no images are left for the validation piece; lower max_train_samples / "
            "samples_per_class, or set data.validation_fraction to 0"
        )
    validation = train.select(val_idx) if len(val_idx) else None
    train = train.select(train_idx)

    if cfg.eval_split is not None:
        evaluation = others[cfg.eval_split]
        eval_name = cfg.eval_split
        if cfg.max_eval_samples is not None:
            eval_labels = np.asarray(column(evaluation, label), dtype=np.int64)
            evaluation = evaluation.select(balanced_sample(eval_labels, cfg.max_eval_samples, seed + 2))
            eval_name = f"{cfg.eval_split} (class-balanced subset of {len(evaluation)})"
    else:
        # Nothing else to report on: the validation piece is reported, and the card says so.
        evaluation = validation
        eval_name = f"validation piece of '{cfg.train_split}' ({cfg.validation_fraction:g}, seeded, stratified)"
        if cfg.max_eval_samples is not None and len(evaluation) > cfg.max_eval_samples:
            evaluation = evaluation.select(
                balanced_sample(np.asarray(column(evaluation, label)), cfg.max_eval_samples, seed + 2)
            )
    return Splits(train, validation, evaluation, eval_name, names, image, label, notes)


# ------------------------------------------------------------------------------ decode


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


def to_rgb(image, background: tuple[int, int, int] = (255, 255, 255)):
    """Any PIL image → upright 8-bit RGB.

    EXIF orientation is applied first (datasets' Image feature does not: datasets #6252).
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

    if isinstance(value, str):
        source: Any = value
    elif value.get("bytes") is not None:
        source = io.BytesIO(value["bytes"])
    else:
        source = value.get("path")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(source)
        image.load()
    return image


def image_source(value: dict[str, Any] | str | None) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "<missing>"
    return value.get("path") or "<embedded bytes>"


class Decoder:
    """The body of the one-off ``datasets.map`` pass: image → uint8 CHW of the model size.

    Each image goes through the model's own image processor, so the cached pixels are
    exactly what the processor (and so ``pipeline()``) feeds the model, to the rounding of
    uint8. Two ways, the same bytes:

    - ``uint8``: the processor's own resize and crop with its float steps turned off
      (``do_rescale=False, do_normalize=False``; for a timm processor, its transforms up
      to ``ToTensor``). About 10× faster: the float pass that is then undone makes and
      faults in three batch-sized float tensors (issue #6).
    - ``float``: the processor as it is, with the normalisation undone and rounded.

    The ``uint8`` way is taken only when it gives exactly the ``float`` way's bytes on a
    noise image at construction, so a processor with other steps after its resize falls
    back to the float way instead of silently caching different pixels.

    ``channels_last`` stores each image as H×(W×3) in column :data:`HWC_COLUMN` (see ``decode``).
    """

    def __init__(self, processor, image_column: str, label_column: str, channels_last: bool = False) -> None:
        self.processor = processor
        self.image_column = image_column
        self.label_column = label_column
        self.channels_last = channels_last
        self.column = HWC_COLUMN if channels_last else "pixel_values"
        mean, std = processor_normalization(processor)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.scale = _rescale_factor(processor)
        self.way = "uint8" if self._uint8_matches() else "float"

    def pixels(self, images: list) -> torch.Tensor:
        return self._uint8(images) if self.way == "uint8" else self._float(images)

    def _float(self, images: list) -> torch.Tensor:
        out = self.processor(images=images, return_tensors="pt")["pixel_values"].float()
        out = (out * self.std + self.mean) / self.scale
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def _uint8(self, images: list) -> torch.Tensor:
        if getattr(self.processor, "data_config", None) is not None:  # timm: its torchvision transforms
            head = _before_to_tensor(getattr(self.processor, "val_transforms", None))
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
        good, bad_reason = [], []
        for value in batch[self.image_column]:
            try:
                good.append(to_rgb(open_image(value)))
                bad_reason.append("")
            except Exception as err:  # noqa: BLE001 - every decode failure is reported, none is fatal here
                good.append(None)
                bad_reason.append(f"{type(err).__name__}: {first_line(err)}")
        ok = [im for im in good if im is not None]
        pixels = self.pixels(ok).numpy() if ok else None
        if pixels is not None and self.channels_last:
            n, c, h, w = pixels.shape
            pixels = torch.from_numpy(pixels).permute(0, 2, 3, 1).contiguous().view(n, h, w * c).numpy()
        out_pixels, j = [], 0
        for im in good:
            if im is None:
                out_pixels.append(None)
            else:
                out_pixels.append(pixels[j])
                j += 1
        return {
            self.column: out_pixels,
            "labels": batch[self.label_column],
            "bad_reason": bad_reason,
            "source": [image_source(v) for v in batch[self.image_column]],
        }

    def output_shape(self) -> tuple[int, ...]:
        """The stored shape of one image: (3, H, W), or (H, W×3) channels-last."""
        from PIL import Image

        c, h, w = self.pixels([Image.new("RGB", (97, 61))]).shape[1:]
        return (h, w * c) if self.channels_last else (c, h, w)


def _before_to_tensor(transforms):
    """A torchvision ``Compose`` cut before its ``ToTensor`` (timm's ``MaybeToTensor``), when
    only normalisation follows it; else None."""
    from torchvision import transforms as T

    steps = list(getattr(transforms, "transforms", []))
    cut = next((i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__), None)
    if cut is None or any(type(step).__name__ != "Normalize" for step in steps[cut + 1 :]):
        return None
    return T.Compose(steps[:cut])


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
) -> Decoded:
    """Decode, fix and resize every image once (a fingerprinted, cached ``datasets.map``).

    ``channels_last`` stores each image's bytes in H×W×3 order (column :data:`HWC_COLUMN`); :class:`FastRows`
    still gives N×3×H×W batches, as views with channels-last strides. For a split that
    will be randomly cropped: torch's uint8 antialiased resize works on channels-last
    pixels, and given the usual layout it repacks its input and output, about 3× the time
    of the resize itself (issue #6; 15 ms → 5 ms per 64 crops at 224 px on one core).
    """
    from datasets import Array2D, Array3D, Features, Image, Value

    decoder = Decoder(processor, image_column, label_column, channels_last)
    shape = decoder.output_shape()
    # Undecoded so that one corrupt file is a row to set aside, not an exception that ends
    # iteration of the whole split (datasets #6470), and so that we apply EXIF rotation.
    feature = dataset.features[image_column]
    if isinstance(feature, Image):
        dataset = dataset.cast_column(image_column, Image(decode=False))
    fingerprint = hashlib.sha256(
        "|".join(
            [dataset._fingerprint, processor.to_json_string(), image_column, label_column, _DECODE_VERSION]
            + (["hwc"] if channels_last else [])
        ).encode()
    ).hexdigest()[:32]
    features = Features(
        {
            decoder.column: (Array2D if channels_last else Array3D)(shape=shape, dtype="uint8"),
            "labels": Value("int64"),
            "bad_reason": Value("string"),
            "source": Value("string"),
        }
    )
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if len(dataset) >= 4000 else None
    mapped = dataset.map(
        decoder,
        batched=True,
        batch_size=64,
        remove_columns=dataset.column_names,
        features=features,
        num_proc=num_proc,
        new_fingerprint=fingerprint,
        desc=desc,
    )
    # Only the two small text columns are read here: a row read would also decode pixels.
    reasons = mapped["bad_reason"][:]
    bad_idx = [i for i, r in enumerate(reasons) if r]
    sources = mapped.select(bad_idx)["source"][:] if bad_idx else []
    bad = [{"path": path, "reason": reasons[i]} for i, path in zip(bad_idx, sources)]
    if bad_idx:
        keep = np.setdiff1d(np.arange(len(mapped)), bad_idx)
        mapped = mapped.select(keep)
    mapped = mapped.remove_columns(["bad_reason", "source"])
    # Both datasets formatters widen the uint8 pixels to int64 (8× the bytes): the Trainer
    # reads batches through FastRows, which keeps them uint8; BatchTransform takes either.
    mapped.set_format("numpy", columns=[decoder.column, "labels"])
    return Decoded(mapped, bad)


def pixel_column(dataset) -> str | None:
    """The decoded pixel column of a split (``pixel_values`` or :data:`HWC_COLUMN`), or None."""
    from datasets import Array2D, Array3D

    features = getattr(dataset, "features", None) or {}
    if isinstance(features.get("pixel_values"), Array3D):
        return "pixel_values"
    return HWC_COLUMN if isinstance(features.get(HWC_COLUMN), Array2D) else None


def image_size(dataset) -> tuple[int, int]:
    """(height, width) of a decoded split's images."""
    column = pixel_column(dataset)
    if column is None:
        raise ValueError(f"not a decoded split: no 'pixel_values' or '{HWC_COLUMN}' column")
    shape = tuple(dataset.features[column].shape)
    return (shape[0], shape[1] // 3) if column == HWC_COLUMN else shape[1:]


class FastRows(torch.utils.data.Dataset):
    """A decoded split as a DataLoader reads it: a batch is one gather into one uint8 tensor.

    Through datasets, a batch of ``Array3D`` rows costs an Arrow ``take`` (a copy), one
    numpy array per row (datasets' numpy formatter also widens uint8 to int64, 8× the
    bytes), and a stacking collator (another copy): about 5 ms per 64 images at 224 px,
    as much as the whole rest of the input pipeline (issue #6). Here each row is copied
    once, from zero-copy numpy views of the memory-mapped Arrow buffers straight into the
    batch tensor (about 0.6 ms). ``__getitems__`` returns a :class:`RowBatch`: the rows a
    collator expects (views into the batch), carrying the batch itself for :func:`collate`.
    A channels-last split (``decode(channels_last=True)``) gives the same N×3×H×W batches,
    with channels-last strides.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._views: _RowViews | None = None

    @classmethod
    def wrap(cls, dataset):
        """``dataset`` in a FastRows when it is a decoded split; anything else unchanged."""
        from datasets import Dataset

        if isinstance(dataset, Dataset) and pixel_column(dataset) is not None:
            return cls(dataset)
        return dataset

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the dataset pickled: views of memory-mapped buffers would be
        # pickled as copies of the whole split. A worker makes its own views on first use.
        return {"dataset": self.dataset, "_views": None}

    def _arrays(self) -> _RowViews:
        """Zero-copy flat views (a row per image) of each Arrow chunk's valid rows, and for every
        physical row its chunk and its position in that chunk's view (-1: a bad image)."""
        if self._views is None:
            table = self.dataset.data  # the physical Arrow table, memory-mapped from the cache
            column = pixel_column(self.dataset)
            stored = tuple(self.dataset.features[column].shape)
            h, w = image_size(self.dataset)
            shape = (h, w, 3) if column == HWC_COLUMN else stored
            views, chunk_of, position = [], [], []
            for c, chunk in enumerate(table.column(column).chunks):
                # Not chunk.to_numpy(): with a null row (a bad image, set aside by the indices
                # mapping) datasets makes a float64 copy of the whole chunk. Null entries
                # of a list array hold no values, so the flattened values are the valid rows.
                storage = getattr(chunk, "storage", chunk)
                valid = ~storage.is_null().to_numpy(zero_copy_only=False)
                flat = storage
                for _ in stored:
                    flat = flat.flatten()
                # One flat row per image: numpy copies an (H, W, 3) row 3 bytes at a time.
                views.append(flat.to_numpy(zero_copy_only=True).reshape(-1, int(np.prod(shape))))
                chunk_of.append(np.full(len(valid), c, dtype=np.int64))
                position.append(np.where(valid, np.cumsum(valid) - 1, -1))
            # select()/shuffle() leave the table alone and add an indices mapping (e.g. after
            # setting bad files aside): logical row i is physical row physical[i].
            mapping = self.dataset._indices
            self._views = _RowViews(
                shape=shape,
                channels_last=column == HWC_COLUMN,
                chunks=views,
                chunk_of=np.concatenate(chunk_of) if chunk_of else np.zeros(0, np.int64),
                position=np.concatenate(position) if position else np.zeros(0, np.int64),
                labels=table.column("labels").to_numpy(),
                physical=mapping.column(0).to_numpy() if mapping is not None else None,
            )
        return self._views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> RowBatch:
        v = self._arrays()
        n = len(self)
        rows = np.asarray(indices, dtype=np.int64)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for a split of {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        if v.physical is not None:
            rows = v.physical[rows]
        if len(rows) and (v.position[rows] < 0).any():
            raise IndexError("a row without pixels (a bad image) was requested")
        pixels = torch.empty((len(rows), *v.shape), dtype=torch.uint8)
        out = pixels.numpy().reshape(len(rows), -1)
        for k, (c, r) in enumerate(zip(v.chunk_of[rows].tolist(), v.position[rows].tolist())):
            out[k] = v.chunks[c][r]
        if v.channels_last:
            pixels = pixels.permute(0, 3, 1, 2)  # N×3×H×W, a view: no copy
        return RowBatch({"pixel_values": pixels, "labels": torch.from_numpy(v.labels[rows].astype(np.int64))})


@dataclass
class _RowViews:
    """What FastRows reads a batch from (built once per process, never pickled)."""

    shape: tuple[int, ...]  # of one image: (3, H, W), or (H, W, 3) when channels_last
    channels_last: bool
    chunks: list[np.ndarray]  # per Arrow chunk: (valid rows, pixels per image) uint8, zero-copy
    chunk_of: np.ndarray  # per physical row: its chunk
    position: np.ndarray  # per physical row: its index in that chunk's view, -1 for a bad image
    labels: np.ndarray  # per physical row
    physical: np.ndarray | None  # per logical row: its physical row (None: the same)


class RowBatch(list):
    """A batch from :class:`FastRows`: the list of row dicts that any collator accepts (views
    into the batch tensor) plus ``collated``, the batch itself, which :func:`collate` returns
    without stacking the rows again."""

    def __init__(self, collated: dict[str, torch.Tensor]) -> None:
        pixels, labels = collated["pixel_values"], collated["labels"]
        super().__init__({"pixel_values": pixels[i], "labels": labels[i]} for i in range(len(labels)))
        self.collated = collated


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The Trainer's collator: a :class:`RowBatch` as it is, anything else as
    ``transformers.default_data_collator`` collates it."""
    if isinstance(rows, RowBatch):
        return dict(rows.collated)
    from transformers import default_data_collator

    return default_data_collator(rows)


# ---------------------------------------------------------------------- batch transforms


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Run the block with one intra-op thread on CPU (nothing changes on other devices)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _unused(buffer: torch.Tensor) -> bool:
    """True when no tensor but ``buffer`` itself holds its storage. The temporary storage
    object made for the query counts one; an unknown torch without the query says no."""
    try:
        return torch._C._storage_Use_Count(buffer.untyped_storage()._cdata) <= 2
    except (AttributeError, RuntimeError):
        return False


def _resized_crop_uint8(image: torch.Tensor, top: int, left: int, height: int, width: int, size: list[int], antialias: bool) -> torch.Tensor:
    """``v2.functional.resized_crop`` for a uint8 image on CPU with bilinear interpolation,
    the same bytes: torchvision crops by slicing and resizes with ``interpolate`` on the
    uint8 pixels (torch's antialiased uint8 kernel). Called directly, for speed (issue #6):
    torchvision's dispatch costs about 30 µs per image, and for a cropped channels-last
    image its 1-image batch hides the layout, so the kernel repacks its output
    (pytorch#68430, worked around in torchvision only for uncropped images).
    """
    if (height, width) == tuple(size):
        return image[:, top : top + height, left : left + width]  # torchvision does not resize then
    # As one image of a batch, with a batch stride that keeps the layout visible.
    extent = max(n * stride for n, stride in zip(image.shape, image.stride()))
    batch = image.as_strided((1, *image.shape), (extent, *image.stride()))
    crop = batch[:, :, top : top + height, left : left + width]
    # Scaled up in both directions, the antialiased kernel is plain bilinear, and torch's
    # kernel without antialiasing gives the same bytes about 20% faster (the equality is
    # checked against v2 by tests/test_features.py::test_batch_augmentation_draws_exactly...).
    antialias = antialias and (height > size[0] or width > size[1])
    return torch.nn.functional.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=antialias)[0]


def _presets() -> dict[str, Any]:
    from torchvision.transforms import v2

    return {
        "trivial_augment": v2.TrivialAugmentWide,
        "rand_augment": v2.RandAugment,
        "auto_augment": lambda **kw: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, **kw),
        "augmix": v2.AugMix,
    }


class BatchTransform:
    """uint8 batches → normalised float batches on the batch's device; augments in training.

    Augmentation uses torchvision.transforms.v2 on each image of the batch (independent
    random crops and flips per image; a v2 transform given a whole batch would apply one
    random draw to all of it). Given a ``seed``, the draws depend on it alone (see
    ``FinetuneTrainer.compute_loss``), which makes interrupted runs resume exactly.
    """

    def __init__(
        self,
        mean: list[float],
        std: list[float],
        size: tuple[int, int],
        augment: AugmentConfig | None,
        channels_last: bool = False,
    ):
        from torchvision.transforms import v2

        #: Batches come out in channels-last memory (same shape and values) for a model
        #: converted to it (``model.use_channels_last``).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

        # (x / 255 - mean) / std as x * scale + shift: two passes over the batch, not three.
        std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).float()
        self.shift = (-torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1) / std_t).float()
        steps = []
        #: (height, width) of training crops; None: images keep their size.
        self.crop_size = tuple(size) if augment is not None and augment.crop_scale is not None else None
        if augment is not None and augment.crop_scale is not None:
            steps.append(v2.RandomResizedCrop(size, scale=tuple(augment.crop_scale), antialias=True))
        if augment is not None and augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment is not None and augment.preset is not None:
            # Bilinear, as torchvision's classification reference recipes build them.
            steps.append(_presets()[augment.preset](interpolation=v2.InterpolationMode.BILINEAR))
        #: The steps on uint8 pixels (crop, flip, policy); None: none.
        self.augment = v2.Compose(steps) if steps else None
        #: Random erasing, on each normalised image (in place); None: off.
        self.erase = (
            v2.RandomErasing(p=augment.random_erasing, inplace=True)
            if augment is not None and augment.random_erasing > 0
            else None
        )
        self._buffers: dict[bool, list[torch.Tensor]] = {}

    @property
    def augments(self) -> bool:
        """Whether training batches are augmented at all."""
        return self.augment is not None or self.erase is not None

    def without_augmentation(self) -> BatchTransform:
        """A copy that only normalises (sharing this one's buffers)."""
        plain = copy.copy(self)
        plain.augment, plain.erase, plain.crop_size = None, None, None
        return plain

    def __call__(self, pixels: torch.Tensor, train: bool, seed: int | None = None) -> torch.Tensor:
        pixels = torch.as_tensor(pixels)
        if pixels.is_floating_point():  # already normalised (e.g. a caller's own tensors)
            return pixels
        augment = train and self.augments
        shape = tuple(pixels.shape)
        if augment and self.crop_size is not None and len(shape) == 4:
            shape = (*shape[:2], *self.crop_size)  # crops come out at the transform's size
        out = self._output(shape, pixels.device)
        scale, shift = self.scale.to(out.device), self.shift.to(out.device)
        if augment:
            # Given a seed, the draws depend on it alone (the Trainer derives it from the
            # training step), so a run resumed mid-epoch augments exactly like one that never
            # stopped (issue #5); the global generator is left as it was.
            devices = [pixels.device] if pixels.device.type == "cuda" else []
            rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
            # Issue #6: each image is a small tensor, and on CPU splitting each of its ops
            # across intra-op threads costs more than it saves (5-25× slower on a busy
            # 2-core machine), so the per-image loop runs on one thread.
            scale_one, shift_one = scale[0], shift[0]
            with rng, _one_cpu_thread(pixels.device):
                if seed is not None:
                    torch.manual_seed(seed)
                for i, image in enumerate(pixels):
                    one = out[i]
                    one.copy_(self._augment_one(image))  # uint8 → float, into the batch
                    # Normalised while the image is still in the CPU's cache (issue #6).
                    one.mul_(scale_one).add_(shift_one)
                    if self.erase is not None:
                        self.erase(one)
            return out
        out.copy_(pixels)
        # Normalised in place: no batch-sized temporaries (issue #6).
        return out.mul_(scale).add_(shift)

    def _output(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 tensor of ``shape`` on ``device`` to write the batch into.

        On CPU a fresh batch-sized tensor is the single largest cost of normalisation: a
        float batch of 64 images at 224 px (38 MB) is above glibc's largest mmap threshold,
        so every batch is a new mapping and 9,400 page faults, 4-5× the arithmetic itself
        (issue #6). So buffers are reused, but only when nothing else can still read
        them: callers get a view, and while any view (a Python reference, an autograd graph
        that saved the input, a numpy array) is alive, the storage's use count shows it.
        PyTorch's CUDA-graph trees check their outputs the same way before reusing memory.
        Two buffers per mode: a loop ``x = transform(batch)`` still holds the last batch
        while it asks for the next. GPUs have a caching allocator and need none of this.
        """
        if len(shape) != 4:
            return torch.empty(shape, dtype=torch.float32, device=device)
        if device.type != "cpu":
            return torch.empty(shape, dtype=torch.float32, device=device, memory_format=self.memory_format)
        # An inference-mode tensor may not be saved for backward: separate buffers per mode.
        pool = self._buffers.setdefault(torch.is_inference_mode_enabled(), [])
        free = [i for i, b in enumerate(pool) if _unused(b)]
        for i in free:
            if pool[i].shape[1:] == shape[1:] and pool[i].shape[0] >= shape[0]:
                return pool[i][: shape[0]]  # a short last batch takes the front of a full one
        buffer = torch.empty(shape, memory_format=self.memory_format)
        if len(pool) < 2:
            pool.append(buffer)
        elif free:  # a free buffer that does not fit (another size, or a short batch's): replace it
            pool[free[0]] = buffer
        return buffer[: shape[0]]

    def _augment_one(self, image: torch.Tensor) -> torch.Tensor:
        """``self.augment(image)``, with the same random draws in the same order, but calling
        the v2 functional ops directly: the Compose / pytree dispatch around them costs about
        a third of the per-image time at 224 px on CPU (issue #6)."""
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as F

        for step in self.augment.transforms if self.augment is not None else []:
            if isinstance(step, v2.RandomResizedCrop):
                make_params = getattr(step, "make_params", None) or step._get_params  # torchvision < 0.21
                p = make_params([image])
                top, left, height, width = p["top"], p["left"], p["height"], p["width"]
                # torchvision keeps the mode as an InterpolationMode or, since 0.2x, its string.
                bilinear = getattr(step.interpolation, "value", step.interpolation) == "bilinear"
                if image.device.type == "cpu" and image.dtype == torch.uint8 and bilinear:
                    image = _resized_crop_uint8(image, top, left, height, width, list(step.size), step.antialias)
                else:
                    image = F.resized_crop(
                        image, top, left, height, width, step.size,
                        interpolation=step.interpolation, antialias=step.antialias,
                    )
            elif isinstance(step, v2.RandomHorizontalFlip):
                if torch.rand(1) < step.p:  # v2 applies the flip unless rand >= p
                    image = F.horizontal_flip(image)
            else:
                image = step(image)
        return image

    def describe(self) -> str:
        if not self.augments:
            return "none"
        from torchvision.transforms import v2

        parts = []
        for t in self.augment.transforms if self.augment is not None else []:
            if isinstance(t, v2.RandomResizedCrop):
                parts.append(f"random resized crop (scale {t.scale[0]:g}-{t.scale[1]:g})")
            elif isinstance(t, v2.RandomHorizontalFlip):
                parts.append("horizontal flip")
            else:
                parts.append(type(t).__name__)
        if self.erase is not None:
            parts.append(f"random erasing (p={self.erase.p:g})")
        return ", ".join(parts) + " (per image, batch-wise)"
