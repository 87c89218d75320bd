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


# ------------------------------------------------------------------------------ multi-label


def decoded_multi_label(tmp_path: Path, model: Path, channels_last: bool = False):
    """The train split of the generated multi-label set, encoded and decoded: (decoded, label sets)."""
    from tests.helpers.data import cfg
    from tests.helpers.multi_label import write_multi_label_set

    _, processor = load_probe_model(model)
    written = write_multi_label_set(tmp_path / "ml", "jsonl", n_train=24)
    c = cfg(dataset=written.dataset, validation_fraction=0)
    s = data.make_splits(data.load_raw(c), c, seed=0)
    decoded = data.decode(s.train, processor, s.image_column, s.label_column, None, "t", channels_last=channels_last)
    return decoded.dataset, s.train[s.label_column][:], len(s.class_names)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_rows_give_multi_hot_rows_equal_to_the_label_lists(tiny_vit: Path, tmp_path: Path, channels_last: bool) -> None:
    from datasets import ClassLabel, List, concatenate_datasets

    decoded, lists, num = decoded_multi_label(tmp_path, tiny_vit, channels_last)
    assert isinstance(decoded.features["labels"], List) and isinstance(decoded.features["labels"].feature, ClassLabel)
    assert any(len(v) > 1 for v in lists) and any(len(v) == 0 for v in lists)
    # Two Arrow chunks and an indices mapping, as a split decoded in pieces and filtered has.
    both = concatenate_datasets([decoded.select(range(10)), decoded.select(range(10, len(decoded)))])
    order = [7, 3, 15, 0, 22, 11]
    both = both.select(order + [1])
    fast = data.FastRows.wrap(both)
    rows = [4, 0, 2, -1, 5, 1, 3]
    batch = data.collate(fast.__getitems__(rows))
    expected = [lists[(order + [1])[r]] for r in rows]
    assert batch["labels"].dtype == torch.float32 and tuple(batch["labels"].shape) == (len(rows), num)
    assert [np.flatnonzero(row).tolist() for row in batch["labels"].numpy()] == expected
    # The pixels are those of the same rows.
    plain = data.collate(data.FastRows.wrap(decoded).__getitems__([(order + [1])[r] for r in rows]))
    assert torch.equal(batch["pixel_values"], plain["pixel_values"])
    # What a worker keeps: the class indices and offsets of the split, not a dense matrix.
    kept = fast._arrays().labels
    assert kept.values.dtype == np.int64 and len(kept.values) == sum(len(v) for v in lists[:10]) + sum(len(v) for v in lists[10:])
    assert not any(isinstance(v, np.ndarray) and v.ndim == 2 for v in vars(kept).values())


def test_multi_hot_rows_survive_pickling_for_workers(tiny_vit: Path, tmp_path: Path) -> None:
    import pickle

    decoded, lists, _ = decoded_multi_label(tmp_path, tiny_vit)
    fast = data.FastRows.wrap(decoded)
    fast.__getitems__([0])
    again = pickle.loads(pickle.dumps(fast))
    assert again._views is None
    labels = data.collate(again.__getitems__(list(range(len(again)))))["labels"]
    assert [np.flatnonzero(row).tolist() for row in labels.numpy()] == lists
