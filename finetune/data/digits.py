"""``builtin:digits``: scikit-learn's handwritten digits as a ``DatasetDict`` of RGB images with a fixed stratified test split."""

from __future__ import annotations

from finetune.recipe.builtins import DATASETS, PREFIX


def load_dataset(name: str):
    """``builtin:digits`` → DatasetDict(train, test)."""
    key = name[len(PREFIX) :]
    if key == "digits":
        return digits()
    raise ValueError(f"unknown built-in data set '{name}'; available: {', '.join(PREFIX + d for d in DATASETS)}")


def digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 1,797 handwritten digits (8×8, 16 grey levels) as RGB images.

    The test split is fixed (stratified, seed 0: 360 images, 35-37 per class) so every run
    and every recipe is scored on the same held-out images.
    """
    import numpy as np
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # 0..16 ink levels → 0..255, white digit on black as scikit-learn draws it.
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = [PILImage.fromarray(p, mode="L").convert("RGB") for p in pixels]
    labels = bunch.target.astype(int).tolist()
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})

    def split(idx):
        idx = sorted(idx.tolist())
        return Dataset.from_dict(
            {"image": [images[i] for i in idx], "label": [labels[i] for i in idx]}, features=features
        )

    return DatasetDict(train=split(idx_train), test=split(idx_test))
