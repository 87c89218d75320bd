"""Which reader streams ``data.dataset``: an image folder or a table of paths (listed), parquet files, WebDataset tars, or anything else through ``datasets`` streaming."""

from __future__ import annotations

from pathlib import Path

from finetune.data.sources import DataError, check_holds_images
from finetune.data.streaming.hub import open_hub
from finetune.data.streaming.parquet import open_parquet
from finetune.data.streaming.sources import StreamSource, list_image_folder, listed_source, open_table
from finetune.data.streaming.tar import open_tars
from finetune.recipe import DataConfig
from finetune.recipe.builtins import is_builtin
from finetune.utils.errors import first_line
from finetune.utils.locations import looks_like_path


def open_stream(cfg: DataConfig, wanted: list[str]) -> StreamSource:
    """The splits ``wanted`` (train first) of ``data.dataset`` as streams; DataError for a
    source that cannot be streamed, naming what to do instead."""
    name = cfg.dataset
    if is_builtin(name):
        raise DataError(
            f"data.streaming: '{name}' is a small built-in set held in memory; set data.streaming to false or 'auto'"
        )
    path = Path(name).expanduser()
    try:
        if path.is_file():
            return _open_file(path, cfg, wanted)
        if path.is_dir():
            return _open_folder(path, cfg, wanted)
        if looks_like_path(name):
            raise DataError(f"data.dataset: no such folder or file '{name}'; check the path")
        return _by_builder(name, cfg, wanted, local=False)
    except DataError:
        raise
    except FileNotFoundError as err:
        raise DataError(f"data.dataset: cannot find '{name}' ({first_line(err)}); check the id or path") from None
    except (ConnectionError, OSError) as err:
        raise DataError(f"data.dataset: cannot stream '{name}' ({first_line(err)}); check the id, path or network") from None


def _open_file(path: Path, cfg: DataConfig, wanted: list[str]) -> StreamSource:
    ext = path.suffix.lower()
    if ext == ".parquet":
        return open_parquet({"train": [str(path)]}, cfg, wanted)
    if ext == ".tar":
        return open_tars({"train": [path]}, cfg, wanted)
    if ext in (".csv", ".json", ".jsonl"):
        return open_table(path, cfg, wanted)
    raise DataError(
        f"data.dataset: '{path}' cannot be streamed (use parquet, CSV, JSON-lines or WebDataset .tar files, "
        "or an image folder); or set data.streaming to false"
    )


def _open_folder(root: Path, cfg: DataConfig, wanted: list[str]) -> StreamSource:
    check_holds_images(root)
    listed = list_image_folder(root)
    if listed is not None:
        splits, names = listed
        return listed_source(splits, names, "image", "label", cfg, wanted, "image folder")
    return _by_builder(str(root), cfg, wanted, local=True)


def _by_builder(name: str, cfg: DataConfig, wanted: list[str], local: bool) -> StreamSource:
    """A folder of data files, or a Hub data set: which files make which split is decided by
    `datasets`, as on the decode-cache path; parquet files are read by row group (their
    sizes are in their footers), local tars with the `webdataset` package, and anything
    else through `datasets` streaming."""
    from datasets import load_dataset_builder

    builder = load_dataset_builder(name, cfg.config, revision=None if local else cfg.revision)
    files = {split: [str(f) for f in found] for split, found in (builder.config.data_files or {}).items()}
    if builder.name == "parquet":
        return open_parquet(files, cfg, wanted)
    if builder.name == "webdataset" and local:
        return open_tars({split: [Path(f) for f in found] for split, found in files.items()}, cfg, wanted,
                         builder.info.features)
    return open_hub(cfg, wanted)
