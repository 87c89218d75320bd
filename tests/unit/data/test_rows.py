"""rows.py: FastRows gathers batches from the decode cache with the values the dataset gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from finetune import data
from tests.helpers.features import decode_folder, load_probe_model
from tests.helpers.images import make_image_folder


def test_fast_rows_give_the_same_batches_as_the_dataset(tiny_resnet: Path, tmp_path: Path) -> None:
    from transformers import default_data_collator

    _, processor = load_probe_model(tiny_resnet)
    decoded = decode_folder(make_image_folder(tmp_path / "images", per_class=3, splits=("train",)), processor)
    decoded = decoded.select([4, 0, 7, 2, 8, 1])  # an indices mapping, as after setting bad files aside
    fast = data.FastRows.wrap(decoded)
    assert isinstance(fast, data.FastRows) and len(fast) == len(decoded)
    indices = [5, 0, 3, 3]
    ours = default_data_collator(fast.__getitems__(indices))
    theirs = default_data_collator(decoded.__getitems__(indices))  # what a DataLoader reads without FastRows
    # Same values; FastRows keeps them uint8 (datasets' numpy formatter widens them to int64).
    assert ours["pixel_values"].dtype == torch.uint8
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"].to(torch.uint8))
    assert torch.equal(ours["pixel_values"].long(), theirs["pixel_values"].long())
    assert torch.equal(ours["labels"], theirs["labels"])


def test_fast_rows_skip_bad_images_left_in_the_arrow_table(tiny_vit: Path, tmp_path: Path) -> None:
    import pickle

    from datasets import Dataset
    from datasets import Image as ImageFeature

    from tests.helpers.images import class_image

    _, processor = load_probe_model(tiny_vit)
    rng = np.random.default_rng(0)
    paths = []
    for i, name in enumerate(["red", "bad", "green", "blue", "bad", "red", "green"]):
        path = tmp_path / f"{i}.png"
        if name == "bad":
            path.write_bytes(b"not a png")
        else:
            class_image(name, rng, 12).save(path)
        paths.append(str(path))
    raw = Dataset.from_dict({"image": paths, "label": [0, 1, 1, 2, 0, 0, 1]}).cast_column("image", ImageFeature())
    decoded = data.decode(raw, processor, "image", "label", None, "t")
    assert len(decoded.bad) == 2 and len(decoded.dataset) == 5  # the bad rows stay in the table as nulls
    fast = data.FastRows.wrap(decoded.dataset)
    indices = [4, 0, 2, -1, 3, 1]
    batch = data.collate(fast.__getitems__(indices))
    expected = [decoded.dataset[i % 5] for i in indices]
    assert batch["pixel_values"].dtype == torch.uint8
    assert torch.equal(batch["pixel_values"], torch.stack([torch.as_tensor(r["pixel_values"]).to(torch.uint8) for r in expected]))
    assert batch["labels"].tolist() == [int(r["labels"]) for r in expected] == [1, 0, 2, 1, 0, 1]
    # Rows are views into that batch, so any other collator sees the same values.
    from transformers import default_data_collator

    assert torch.equal(default_data_collator(list(fast.__getitems__(indices)))["pixel_values"], batch["pixel_values"])
    with pytest.raises(IndexError):
        fast.__getitems__([5])
    # DataLoader workers get a pickled copy: without the views of the memory-mapped file.
    fast.__getitems__([0])
    clone = pickle.loads(pickle.dumps(fast))
    assert clone._views is None and len(pickle.dumps(fast)) < 20_000
    assert torch.equal(data.collate(clone.__getitems__(indices))["pixel_values"], batch["pixel_values"])
