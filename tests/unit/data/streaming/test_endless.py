"""Shards of unknown sizes: each process reads its own shards round after round, in full batches of equal count, and a resumed stream continues with the same batches."""

from __future__ import annotations

import dataclasses
import itertools
import zlib

import pytest
import torch

from finetune.data import DataError
from finetune.data.streaming.endless import lanes_for
from finetune.data.streaming.open import open_stream
from finetune.data.streaming.sources import ShardedSplit
from finetune.data.streaming.stream import ImageStream
from tests.helpers.data import cfg
from tests.helpers.streams import write_tars


class KeyPipeline:
    size = (2, 2)

    def __call__(self, pixels, key, epoch, train):
        out = torch.zeros((3, 2, 2), dtype=torch.uint8)
        out.view(-1)[:4] = torch.tensor(list(zlib.crc32(key.encode()).to_bytes(4, "little")), dtype=torch.uint8)
        out.view(-1)[4] = epoch
        return out


@pytest.fixture(scope="module")
def unsized(tmp_path_factory) -> ShardedSplit:
    root = tmp_path_factory.mktemp("endless")
    write_tars(root / "w", [5, 3, 6, 2])
    split = open_stream(cfg(dataset=str(root / "w"), eval_split=None), ["train"]).splits["train"]
    return ShardedSplit(split.name, [dataclasses.replace(s, size=None) for s in split.shards], split.label_map)


def take(stream: ImageStream, n: int, workers: int = 0) -> list[dict]:
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return list(itertools.islice(iter(loader), n))


def keys(batch: dict) -> list[int]:
    rows = batch["pixel_values"].reshape(len(batch["labels"]), -1)[:, :4].to(torch.int64)
    return [int(sum(int(v) << (8 * i) for i, v in enumerate(row))) for row in rows]


def test_it_has_no_length_and_full_batches(unsized: ShardedSplit) -> None:
    stream = ImageStream(unsized, KeyPipeline(), batch=3, train=True, seed=0, lanes=2, buffer=4)
    with pytest.raises(TypeError, match="unknown sizes"):
        len(stream)
    got = take(stream, 12, workers=2)
    assert all(len(b["labels"]) == 3 for b in got)
    assert {int(b["pixel_values"].reshape(3, -1)[k, 4]) for b in got for k in range(3)} >= {0, 1}  # rounds go on


def test_processes_read_their_own_shards_each_round(unsized: ShardedSplit) -> None:
    # 4 shards, 2 processes, one lane each: a round is 16 rows, each process reads its two shards.
    per_rank = [take(ImageStream(unsized, KeyPipeline(), batch=1, train=True, seed=0, world=2, rank=r, lanes=1,
                                 buffer=100), 16) for r in range(2)]
    first_round = [{keys(b)[0] for b in rank if int(b["pixel_values"].reshape(-1)[4]) == 0} for rank in per_rank]
    assert not first_round[0] & first_round[1] and len(first_round[0] | first_round[1]) == 16


def test_a_resumed_stream_continues_with_the_same_batches(unsized: ShardedSplit) -> None:
    full = take(ImageStream(unsized, KeyPipeline(), batch=3, train=True, seed=0, lanes=2, buffer=4), 14, workers=2)
    resumed = ImageStream(unsized, KeyPipeline(), batch=3, train=True, seed=0, lanes=2, buffer=4)
    resumed.load_state_dict({"epoch": 0, "batch": 5, "lanes": 2})
    rest = take(resumed, 9, workers=2)
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(rest, full[5:]))


def test_fewer_shards_than_processes_is_one_line() -> None:
    with pytest.raises(DataError, match="2 shard\\(s\\), fewer than the 4 processes"):
        lanes_for(2, 4, 1)
    assert lanes_for(10, 2, 8) == 5


def test_an_evaluation_split_of_unknown_sizes_is_counted(unsized: ShardedSplit) -> None:
    with pytest.raises(ValueError, match="counted"):
        ImageStream(unsized, KeyPipeline(), batch=3, train=False, seed=0)
    counted = unsized.counted()
    assert counted.sizes == [5, 3, 6, 2]
    assert len(ImageStream(counted, KeyPipeline(), batch=3, train=False, seed=0)) == 16


def test_a_lane_of_empty_shards_is_one_line_not_a_hang(unsized: ShardedSplit) -> None:
    empty = ShardedSplit(unsized.name, [dataclasses.replace(s, reader=lambda start=0: iter(())) for s in unsized.shards],
                         unsized.label_map)
    with pytest.raises(DataError, match="hold no rows"):
        take(ImageStream(empty, KeyPipeline(), batch=2, train=True, seed=0), 1)
