"""digits.py: scikit-learn's digits as a data set with a fixed, stratified test split."""

from __future__ import annotations

import numpy as np

from finetune.data import digits


def test_digits_dataset() -> None:
    from datasets import ClassLabel, Image

    ds = digits.load_dataset("builtin:digits")
    assert set(ds) == {"train", "test"} and len(ds["train"]) + len(ds["test"]) == 1797
    assert len(ds["test"]) == 360
    assert isinstance(ds["train"].features["label"], ClassLabel) and isinstance(ds["train"].features["image"], Image)
    assert all(abs(c - 36) <= 1 for c in np.bincount(np.asarray(ds["test"]["label"])))  # stratified
    image = ds["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (8, 8)
    assert digits.load_dataset("builtin:digits")["test"]["label"][:] == ds["test"]["label"][:]  # fixed split
