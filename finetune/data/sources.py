"""Where the images come from: ``data.dataset`` loaded as a ``DatasetDict``, and the junk files a folder holds counted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from finetune.data import digits
from finetune.recipe import DataConfig
from finetune.recipe.builtins import is_builtin
from finetune.utils.errors import first_line
from finetune.utils.images import is_junk
from finetune.utils.locations import looks_like_path

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"
}
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
#: Files of a folder in the Hub's layout that can hold images or list them: tables, and the
#: archives `datasets` reads image folders and WebDataset shards from.
DATA_FILES = set(FILE_BUILDERS) | {".tsv", ".ndjson", ".lance", ".tar", ".zip"}


class DataError(ValueError):
    """A problem with the data the recipe names; one line, with the fix."""


def load_raw(cfg: DataConfig):
    """The data set named by ``data.dataset`` as a ``DatasetDict``."""
    from datasets import load_dataset

    name = cfg.dataset
    if is_builtin(name):
        try:
            return digits.load_dataset(name)
        except ValueError as err:
            raise DataError(f"data.dataset: {err}") from None
    path = Path(name).expanduser()
    try:
        if path.is_file() or any(name.endswith(ext) for ext in FILE_BUILDERS):
            ext = path.suffix.lower()
            if ext not in FILE_BUILDERS:
                raise DataError(
                    f"data.dataset: '{name}' is a file of unknown type; use parquet, CSV or JSON-lines "
                    "(or a folder)"
                )
            if not path.is_file():
                raise DataError(f"data.dataset: no such file '{name}'; check the path")
            ds = load_dataset(FILE_BUILDERS[ext], data_files={"train": str(path)})
            return _resolve_relative_image_paths(ds, path.parent)
        if path.is_dir():
            check_holds_images(path)
            return load_dataset(str(path), cfg.config)
        if looks_like_path(name):
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


def check_holds_images(root: Path) -> None:
    """Refuse a folder with no image (or data) file in it, junk aside: `datasets` would load
    its text or PDF files as a data set with no image column, and the error would name that."""
    others: list[str] = []
    junk: list[str] = []
    seen: set[str] = set()  # class folders may be links; a link back up must not loop
    for folder, dirs, names in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(folder))
        where = Path(folder).relative_to(root)
        junk += [f"{where / d}/" for d in sorted(dirs) if is_junk(d, folder=True)]
        dirs[:] = sorted(
            d for d in dirs if not is_junk(d, folder=True) and os.path.realpath(os.path.join(folder, d)) not in seen
        )
        for name in sorted(names):
            suffix = Path(name).suffix.lower()
            if is_junk(name):
                junk.append(str(where / name))
            elif suffix in IMAGE_EXTENSIONS or suffix in DATA_FILES:
                return
            else:
                others.append(str(where / name))
    if others:
        found = f"found {len(others)} other file(s) such as {', '.join(others[:3])}"
    elif junk:
        found = f"it holds only hidden or system files, which are ignored: {', '.join(junk[:3])}"
    else:
        found = "it is empty"
    raise DataError(
        f"data.dataset: no image files found in '{root}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}; "
        f"{found}); put the images in one sub-folder per class (FOLDER/CLASS/photo.jpg, optionally under "
        "train/ and test/), or point data.dataset at a parquet/CSV/JSON-lines file that lists them"
    )


def _resolve_relative_image_paths(ds, base: Path):
    """Data files may list images by path relative to the file itself."""
    from datasets import Value

    for split in ds:
        for col, feature in ds[split].features.items():
            if isinstance(feature, Value) and feature.dtype in ("string", "large_string") and looks_like_image_paths(ds[split][col][:5]):
                ds[split] = ds[split].map(
                    lambda row, c=col: {c: str(base / row[c]) if not os.path.isabs(row[c]) else row[c]},
                    desc=f"resolving {col} paths",
                )
    return ds


def looks_like_image_paths(values: list[Any]) -> bool:
    return bool(values) and all(
        isinstance(v, str) and Path(v).suffix.lower() in IMAGE_EXTENSIONS for v in values
    )


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

