"""The private dependency APIs that finetune/compat.py relies on still behave as it expects."""

from __future__ import annotations

import datasets
import torch
from datasets import Dataset
from datasets.table import Table

from finetune import compat


def _changed(library: str, version: str, what: str) -> str:
    return f"{library} {version} changed {what}; see finetune/compat.py"


def test_datasets_select_keeps_an_indices_mapping_to_physical_rows() -> None:
    ds = Dataset.from_dict({"x": list(range(10))})
    picked = ds.select([7, 2, 5])  # not contiguous: a mapping, not a slice of the table
    mapping = getattr(picked, "_indices", "absent")
    message = _changed(
        "datasets", datasets.__version__,
        f"Dataset._indices (now {type(mapping).__name__}; was a datasets.table.Table whose column 0 "
        "maps logical to physical rows)",
    )
    assert isinstance(mapping, Table), message
    rows = compat.physical_rows(picked)
    assert rows is not None and rows.tolist() == [7, 2, 5], message
    assert [picked.data.column("x")[int(i)].as_py() for i in rows] == picked["x"][:], message
    assert compat.physical_rows(ds) is None, _changed(
        "datasets", datasets.__version__, "Dataset._indices of an unselected dataset (was None)"
    )


def test_datasets_fingerprint_names_the_state_of_a_dataset() -> None:
    ds = Dataset.from_dict({"x": list(range(10))})
    before = getattr(ds, "_fingerprint", None)
    assert isinstance(before, str) and before, _changed(
        "datasets", datasets.__version__, f"Dataset._fingerprint (now {type(before).__name__}; was a str)"
    )
    assert compat.dataset_fingerprint(ds) == before

    def add_one(row):
        return {"x": row["x"] + 1}

    after = compat.dataset_fingerprint(ds.map(add_one))
    message = _changed(
        "datasets", datasets.__version__,
        "Dataset._fingerprint under map (it no longer changes with a transform, or differs between two "
        "identical ones, so decode caches would be read for the wrong data or never reused)",
    )
    assert after != before and after == compat.dataset_fingerprint(ds.map(add_one)), message


def test_torch_storage_use_count_sees_every_view() -> None:
    message = _changed(
        "torch", torch.__version__,
        "torch._C._storage_Use_Count (a tensor alone read 2 and each view of its storage one more), "
        "so BatchTransform's buffer pool would reuse or never reuse a batch wrongly",
    )
    buffer = torch.empty(4, 3, 2, 2)
    assert not compat.storage_shared(buffer), message
    batch = buffer[:3]  # BatchTransform hands out views like this one
    assert compat.storage_shared(buffer), message
    weight = torch.randn(2, 3, 1, 1, requires_grad=True)
    loss = torch.nn.functional.conv2d(batch, weight).sum()
    del batch  # only the autograd graph, which saved the view, holds it now
    assert compat.storage_shared(buffer), message
    del loss
    assert not compat.storage_shared(buffer), message
    array = buffer.numpy()
    assert compat.storage_shared(buffer), message
    del array
    assert not compat.storage_shared(buffer), message
