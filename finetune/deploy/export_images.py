"""The real images of an export: a check batch and the eval split of the run's data set, and calibration images (seeded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from finetune.deploy import onnx_classifier as onnx_model
from finetune.utils.errors import UserError, first_line

#: Eval images in the PyTorch-vs-ONNX check.
CHECK_IMAGES = 32


class ExportError(UserError, ValueError):
    """A problem with the folder, the options or the model of `finetune export`; one line, with the fix."""


class Images:
    """The real images of an export: a check batch, calibration images, the eval split."""

    def __init__(self, source: Path, calibration_folder: str | None, max_eval: int | None) -> None:
        self.eval_rows = self.train_rows = self.validation_rows = None
        self.image_column = self.label_column = ""
        self.eval_name = ""
        self.class_names: list[str] = []
        self.folder_files: list[str] = []
        self.data_problem: str | None = None
        self.seed = 42
        self._load(source, calibration_folder, max_eval)

    def _load(self, source: Path, calibration_folder: str | None, max_eval: int | None) -> None:
        from finetune import data
        from finetune.recipe import RecipeError, recipe_from_dict
        from finetune.training.arguments import data_seed

        try:
            recipe = recipe_from_dict(json.loads((source / "recipe.json").read_text()), str(source / "recipe.json"))
            self.seed = data_seed(recipe)
            raw = data.load_raw(recipe.data)
            splits = data.make_splits(raw, recipe.data, self.seed)
        except (RecipeError, data.DataError, OSError, ValueError) as err:
            self.data_problem = first_line(err)
        else:
            from datasets import Image

            self.image_column, self.label_column = splits.image_column, splits.label_column
            self.class_names, self.eval_name = splits.class_names, splits.eval_name
            self.train_rows = splits.train.cast_column(self.image_column, Image(decode=False))
            if splits.validation is not None:
                self.validation_rows = splits.validation.cast_column(self.image_column, Image(decode=False))
            rows = splits.eval.cast_column(self.image_column, Image(decode=False))
            if max_eval is not None and len(rows) > max_eval:
                labels = rows[self.label_column]
                if labels and isinstance(labels[0], (list, tuple)):
                    # Multi-label: an image has no one class to balance by.
                    order = np.random.default_rng(self.seed + 3).permutation(len(rows))[:max_eval]
                    rows = rows.select(np.sort(order))
                    self.eval_name += f" (random subset of {len(rows)})"
                else:
                    rows = rows.select(np.sort(data.balanced_sample(np.asarray(labels), max_eval, self.seed + 3)))
                    self.eval_name += f" (class-balanced subset of {len(rows)})"
            self.eval_rows = rows
        if calibration_folder is not None:
            from finetune.deploy.predict import collect_inputs

            if not Path(calibration_folder).is_dir():
                raise ExportError(f"--calibration-data: no such folder '{calibration_folder}'; name a folder of images")
            self.folder_files = [path for path, problem in collect_inputs([calibration_folder]) if problem is None]
            if not self.folder_files:
                raise ExportError(f"--calibration-data: '{calibration_folder}' holds no files; name a folder of images")
        elif self.data_problem is not None:
            raise ExportError(
                f"the run's data set cannot be loaded ({self.data_problem}); the export is checked on real images: "
                "make the data set available again, or pass --calibration-data FOLDER with some of its images"
            )

    @property
    def labelled(self) -> bool:
        return self.eval_rows is not None

    def _read(self, values: list) -> list:
        images = []
        for value in values:
            try:
                images.append(onnx_model.read_image(value))
            except Exception:  # noqa: BLE001 - an unreadable file is left out, as in training
                continue
        return images

    def _sample(self, count: int, rows, seed: int) -> list:
        order = np.random.default_rng(seed).permutation(len(rows))[:count]
        return self._read(rows.select(np.sort(order))[self.image_column])

    def check_batch(self) -> list:
        """Up to CHECK_IMAGES eval images (seeded), else images of --calibration-data."""
        if self.labelled:
            return self._sample(CHECK_IMAGES, self.eval_rows, self.seed)
        return self._read(sorted(self.folder_files)[:CHECK_IMAGES])

    def calibration(self, count: int) -> list:
        """A seeded sample of training images (or the --calibration-data images)."""
        if self.folder_files:
            order = np.random.default_rng(self.seed).permutation(len(self.folder_files))[:count]
            return self._read([self.folder_files[i] for i in sorted(order)])
        return self._sample(count, self.train_rows, self.seed + 4)

    def eval_batches(self, size: int = 64):
        """(images, labels) chunks of the eval split, unreadable files left out. The labels
        are class indices (N,), or for a multi-label split (each label a list of classes)
        multi-hot rows (N × classes)."""
        return self._batches(self.eval_rows, size)

    def validation_batches(self, size: int = 64):
        """The same for the run's validation piece of train (none: nothing), which tunes the
        int8 model's thresholds; never the eval split, whose scores that would flatter."""
        return self._batches(self.validation_rows, size) if self.validation_rows is not None else iter(())

    def _batches(self, rows, size: int):
        for start in range(0, len(rows), size):
            chunk = rows.select(range(start, min(start + size, len(rows))))
            images, labels = [], []
            for value, label in zip(chunk[self.image_column], chunk[self.label_column]):
                got = self._read([value])
                if got:
                    images += got
                    labels.append(label)
            if images:
                if isinstance(labels[0], (list, tuple)):
                    from finetune.data.multi_label import multi_hot

                    yield images, multi_hot(labels, len(self.class_names))
                else:
                    yield images, np.asarray([int(label) for label in labels])


