"""ImageStream: every image once per epoch across processes and loader workers, the same batch count on every process, exact resumes, padded evaluation batches, unreadable images skipped and reported."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.data.streaming.open import open_stream
from finetune.data.streaming.pieces import split_sharded
from finetune.data.streaming.stream import PAD_LABEL, ImageStream
from tests.helpers.data import cfg
from tests.helpers.images import make_image_folder
from tests.helpers.streams import batches, write_parquet, write_tars


class KeyPipeline:
    """Stands in for ImagePipeline: each 'image' carries its key's CRC (and the epoch), so
    a test can tell which images a batch holds."""

    size = (2, 2)
    augments = True

    def __call__(self, pixels: torch.Tensor, key: str, epoch: int, train: bool) -> torch.Tensor:
        code = zlib.crc32(key.encode())
        out = torch.zeros((3, 2, 2), dtype=torch.uint8)
        out.view(-1)[:4] = torch.tensor(list(code.to_bytes(4, "little")), dtype=torch.uint8)
        out.view(-1)[4] = epoch
        return out


def crcs(batch: dict) -> list[int]:
    rows = batch["pixel_values"].reshape(len(batch["labels"]), -1)[:, :4].to(torch.int64)
    return [int(sum(int(v) << (8 * i) for i, v in enumerate(row))) for row, label in zip(rows, batch["labels"]) if label != PAD_LABEL]


def streams(split, world: int, **kw) -> list[ImageStream]:
    return [ImageStream(split, KeyPipeline(), rank=r, world=world, seed=3, **kw) for r in range(world)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("streams")
    folder = make_image_folder(root / "folder", per_class=9, splits=("train", "test"))
    write_tars(root / "tars", [7, 3, 11, 1])
    write_parquet(root / "pq" / "train.parquet", [5, 9, 2])
    return {
        "folder": open_stream(cfg(dataset=str(folder)), ["train", "test"]),
        "tars": open_stream(cfg(dataset=str(root / "tars"), eval_split=None), ["train"]),
        "parquet": open_stream(cfg(dataset=str(root / "pq" / "train.parquet"), eval_split=None), ["train"]),
    }


def all_keys(split) -> list[int]:
    if hasattr(split, "keys"):
        return sorted(zlib.crc32(str(k).encode()) for k in split.keys)
    return sorted(zlib.crc32(r.key.encode()) for s in range(len(split.shards)) for r in split.read(s))


@pytest.mark.parametrize("kind", ["folder", "tars", "parquet"])
@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2), (3, 1)])
def test_every_image_once_per_epoch_across_processes(sources, kind: str, world: int, workers: int) -> None:
    split = sources[kind].splits["train"]
    for epoch in (0, 1):
        seen, counts = [], []
        for s in streams(split, world, batch=4, train=True, lanes=max(1, workers), buffer=5):
            s.set_epoch(epoch)
            got = batches(s, workers)
            counts.append(len(got))
            seen += [c for b in got for c in crcs(b)]
        assert sorted(seen) == all_keys(split), "each image exactly once"
        assert len(set(counts)) == 1, f"unequal batch counts {counts}: a process would wait forever"


def test_epochs_are_shuffled_differently(sources) -> None:
    split = sources["folder"].splits["train"]
    (s,) = streams(split, 1, batch=4, train=True)
    first = [c for b in batches(s) for c in crcs(b)]
    s.set_epoch(1)
    second = [c for b in batches(s) for c in crcs(b)]
    assert sorted(first) == sorted(second) and first != second


def test_split_dataset_by_node_gives_unequal_counts_for_unequal_shards() -> None:
    """Why the plan cuts ranges instead: whole shards per process leave one with more."""
    from datasets import IterableDataset
    from datasets.distributed import split_dataset_by_node

    def rows(shards):
        for shard in shards:
            yield from ({"x": f"{shard}-{i}"} for i in range(int(shard.split(":")[1])))

    ds = IterableDataset.from_generator(rows, gen_kwargs={"shards": ["a:7", "b:3", "c:11", "d:1"]})
    counts = [sum(1 for _ in split_dataset_by_node(ds, rank=r, world_size=2)) for r in range(2)]
    assert sum(counts) == 22 and counts[0] != counts[1]


@pytest.mark.parametrize("kind", ["folder", "tars", "parquet"])
def test_a_resumed_stream_continues_with_the_same_batches(sources, kind: str) -> None:
    split = sources[kind].splits["train"]
    (s,) = streams(split, 1, batch=3, train=True, lanes=2, buffer=4)
    s.set_epoch(1)
    full = [b["pixel_values"] for b in batches(s, workers=2)]
    for j in (1, 2, 3, 5):
        (resumed,) = streams(split, 1, batch=3, train=True, lanes=2, buffer=4)
        resumed.load_state_dict({"epoch": 1, "batch": j, "lanes": 2})
        rest = [b["pixel_values"] for b in batches(resumed, workers=2)]
        assert len(rest) == len(full) - j
        assert all(torch.equal(a, b) for a, b in zip(rest, full[j:]))


def test_a_resume_with_other_lanes_is_refused(sources) -> None:
    (s,) = streams(sources["folder"].splits["train"], 1, batch=3, train=True, lanes=2)
    with pytest.raises(ValueError, match="2 lanes, not 3"):
        ImageStream(s.split, KeyPipeline(), batch=3, train=True, seed=3, lanes=3).load_state_dict(s.state_dict())


@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_evaluation_batches_are_equal_across_processes_and_score_each_image_once(sources, kind: str) -> None:
    split = sources[kind].splits["test" if kind == "folder" else "train"]
    per_rank = [batches(s, workers=2) for s in streams(split, 2, batch=4, train=False, lanes=2)]
    assert len(per_rank[0]) == len(per_rank[1])
    gathered_labels = []
    for a, b in zip(*per_rank):
        assert a["pixel_values"].shape == b["pixel_values"].shape  # the Trainer gathers them
        gathered_labels += a["labels"].tolist() + b["labels"].tolist()
    scored = [c for rank in per_rank for b in rank for c in crcs(b)]
    assert sorted(scored) == all_keys(split)
    # positions() maps each gathered row back to its image, padding to -1.
    positions = streams(split, 2, batch=4, train=False, lanes=2)[0].positions()
    assert len(positions) == len(gathered_labels)
    assert [p == -1 for p in positions] == [label == PAD_LABEL for label in gathered_labels]
    s = streams(split, 2, batch=4, train=False)[0]
    assert [s.record(p).label for p in positions if p >= 0] == [label for label in gathered_labels if label != PAD_LABEL]


def test_an_unreadable_image_is_left_out_and_reported(tmp_path: Path) -> None:
    from finetune.data.streaming.images import ImagePipeline
    from tests.helpers.models import make_tiny_vit

    root = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train",))
    broken = root / "train" / "red" / "red_0.png"
    broken.write_bytes(broken.read_bytes()[:40])
    source = open_stream(cfg(dataset=str(root), eval_split=None), ["train"])
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(make_tiny_vit(tmp_path / "vit"))
    pipeline = ImagePipeline(processor, (32, 32), None, 0)
    train = ImageStream(source.splits["train"], pipeline, batch=4, train=True, seed=0)
    got = batches(train)
    assert sum(len(b["labels"]) for b in got) == 11
    bad = [entry for b in got for entry in b["bad"]]
    assert len(bad) == 1 and bad[0][:2] == ["train", "train/red/red_0.png"]
    assert bad[0][2] == f"UnidentifiedImageError: cannot identify image file {str(broken)!r}"
    evaluation = ImageStream(source.splits["train"], pipeline, batch=4, train=False, seed=0)
    labels = torch.cat([b["labels"] for b in batches(evaluation)])
    assert (labels == PAD_LABEL).sum() == 1 and len(labels) == 12


def test_the_validation_piece_of_shards_is_disjoint_and_sized_by_its_hashes(sources) -> None:
    split = sources["tars"].splits["train"]
    train, validation = split_sharded(split, 0.3, seed=1)
    assert len(train) + len(validation) == len(split)
    keys_t = {r.key for s in range(len(train.shards)) for r in train.read(s)}
    keys_v = {r.key for s in range(len(validation.shards)) for r in validation.read(s)}
    assert len(keys_t) == len(train) and len(keys_v) == len(validation) and not keys_t & keys_v
    again, _ = split_sharded(split, 0.3, seed=1)
    assert [s.size for s in again.shards] == [s.size for s in train.shards]
    # A resumed reader starting past kept rows yields the rest.
    rest = [r.key for r in train.read(2, 3)]
    assert rest == [r.key for r in train.read(2)][3:]
    assert np.isclose(len(validation) / len(split), 0.3, atol=0.2)
