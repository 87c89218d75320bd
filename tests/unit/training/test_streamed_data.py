"""streamed_data and stream_state: when "auto" streams and why, the loader workers, unreadable images counted against the limit, and the stream positioned at a resumed checkpoint's step."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune import data
from finetune.data.streaming import sources as stream_sources
from finetune.data.streaming.stream import ImageStream
from finetune.recipe import recipe_from_dict
from finetune.training import streamed_data
from finetune.training.stream_state import BadImages, StreamState
from tests.helpers.images import make_image_folder


@pytest.fixture(scope="module")
def processor(tiny_vit):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_vit)


def recipe(folder: Path, **data_keys):
    return recipe_from_dict({"description": "d", "model": {"name_or_path": "m"}, "output_dir": "o",
                             "data": {"dataset": str(folder), **data_keys}})


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "imgs", per_class=4)  # 24 px images: 12 train, 6 test


def test_auto_keeps_the_cache_for_a_small_set_and_says_why(folder: Path, processor) -> None:
    choice = streamed_data.choose(recipe(folder), processor)
    assert not choice.stream
    assert choice.why.startswith("estimated decode cache 0.0 GB <= 20.0 GB and fits in the")
    # Each image at its own 24 px, smaller than the model's 32: 3 bytes a pixel.
    source = streamed_data.open_stream(recipe(folder).data, ["train", "test"])
    assert streamed_data.estimate_cache_bytes(source, processor) == 3 * 24 * 24 * 18


def test_auto_streams_above_the_limit_or_the_free_disk(folder: Path, processor, monkeypatch) -> None:
    monkeypatch.setattr(streamed_data, "AUTO_CACHE_LIMIT", 1000)
    choice = streamed_data.choose(recipe(folder), processor)
    assert choice.stream and "> the 0.0 GB limit of data.streaming 'auto'" in choice.why
    monkeypatch.setattr(streamed_data, "AUTO_CACHE_LIMIT", 10**12)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(streamed_data.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 5000, 5000))
    choice = streamed_data.choose(recipe(folder), processor)
    assert choice.stream and "> 90% of the 0.0 GB free in" in choice.why


def test_what_only_the_cache_does_keeps_it(folder: Path, processor) -> None:
    choice = streamed_data.choose(recipe(folder, samples_per_class=2), processor)
    assert not choice.stream and "'data.samples_per_class' draws a class-balanced subset" in choice.why
    assert streamed_data.choose(recipe(folder, streaming=False), processor).why == "data.streaming is false"
    assert streamed_data.choose(recipe(folder, streaming=True), processor).stream


def test_shards_of_unknown_size_are_refused_when_asked_and_cached_on_auto(folder: Path, processor, monkeypatch) -> None:
    unknown = stream_sources.StreamSource(
        {"train": stream_sources.ShardedSplit("train", [stream_sources.Shard("s", None, None)])}, ["a", "b"], "i", "l", "x"
    )
    monkeypatch.setattr(streamed_data, "open_stream", lambda cfg, wanted: unknown)
    with pytest.raises(data.DataError, match="do not state their sizes"):
        streamed_data.choose(recipe(folder, streaming=True), processor)
    choice = streamed_data.choose(recipe(folder), processor)
    assert not choice.stream and choice.why.startswith("it cannot be streamed")


def test_loader_workers(monkeypatch) -> None:
    args = SimpleNamespace(dataloader_num_workers=3, use_cpu=True)
    assert streamed_data.loader_workers(args, user_set=True) == 3
    monkeypatch.setattr(streamed_data.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr("finetune.utils.devices.has_accelerator", lambda: False)
    assert streamed_data.loader_workers(args, user_set=False) == 4  # half of 8 cores on a CPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert streamed_data.loader_workers(args, user_set=False) == 2
    assert streamed_data.loader_workers(SimpleNamespace(dataloader_num_workers=0, use_cpu=False), user_set=False) == 3


def test_unreadable_images_are_counted_once_and_stop_the_run_past_the_limit() -> None:
    bad = BadImages({"train": 100, "test": 20}, limit=0.05)
    bad.add([["train", "a.jpg", "truncated"]] * 3 + [["test", "b.jpg", "empty"]])
    assert sorted(bad.entries()) == [["test", "b.jpg", "empty"], ["train", "a.jpg", "truncated"]]
    with pytest.raises(data.DataError, match=r"2 of 20 images in 'test' cannot be read so far \(10.0% > data.max_bad_fraction 0.05\)"):
        bad.add([["test", "c.jpg", "empty"]])


def test_a_split_of_unknown_size_is_judged_on_the_images_read_so_far() -> None:
    from finetune.training.stream_state import MIN_READ

    bad = BadImages({"train": None}, limit=0.01)
    bad.count("train", 100)
    bad.add([["train", f"s#{i}", "truncated"] for i in range(5)])  # 5% of 100 read: too few to judge
    bad.count("train", MIN_READ)  # 1,100 read: 11 bad are within 1%
    bad.add([["train", f"t#{i}", "truncated"] for i in range(6)])
    with pytest.raises(data.DataError, match=r"12 of 1100 images in 'train' cannot be read so far"):
        bad.add([["train", "u#0", "truncated"]])


def test_a_train_split_of_unknown_size_needs_max_steps_no_validation_piece_and_step_checkpoints(tmp_path) -> None:
    def endless(data_keys: dict, training: dict):
        r = recipe_from_dict({"description": "d", "model": {"name_or_path": "m"}, "output_dir": "o",
                              "data": {"dataset": str(tmp_path), **data_keys}, "training": training})
        streamed_data.check_endless(r, None)

    steps = {"max_steps": 10, "save_strategy": "steps", "save_steps": 5}
    with pytest.raises(data.DataError, match="set training.max_steps"):
        endless({"validation_fraction": 0.0}, {"save_strategy": "no"})
    with pytest.raises(data.DataError, match="set data.validation_fraction to 0"):
        endless({}, steps)
    with pytest.raises(data.DataError, match="training.save_strategy 'epoch'"):
        endless({"validation_fraction": 0.0}, {"max_steps": 10})
    endless({"validation_fraction": 0.0}, steps)


def test_a_resumed_run_starts_the_stream_at_its_checkpoints_step(folder: Path, tmp_path: Path) -> None:
    source = streamed_data.open_stream(recipe(folder).data, ["train"])
    stream = ImageStream(source.splits["train"], None, batch=2, train=True, seed=0, lanes=2)  # 12 images: 6 batches
    checkpoint = tmp_path / "checkpoint-8"
    checkpoint.mkdir()
    state = {"global_step": 8, "stateful_callbacks": {"StreamState": {"args": {}, "attributes": {
        "lanes": 3, "bad_images": [["train", "x.jpg", "empty"]]}}}}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    trainer = SimpleNamespace(args=SimpleNamespace(gradient_accumulation_steps=2, dataloader_num_workers=2))
    callback = StreamState(stream, BadImages({"train": 36}, 1.0))
    callback.resume(trainer, str(checkpoint))
    # 6 batches, 2 a step: 3 steps an epoch; step 8 is epoch 2, 2 steps (4 batches) in.
    assert stream.state_dict() == {"epoch": 2, "batch": 4, "lanes": 3}
    assert trainer.args.dataloader_num_workers == 3 and callback.bad.entries() == [["train", "x.jpg", "empty"]]
    assert callback.state()["attributes"]["lanes"] == 3


def test_the_cache_path_says_what_its_crops_lose(tmp_path: Path, processor) -> None:
    import numpy as np

    from finetune.training.prepared_data import prepare_data
    from tests.helpers.images import CLASSES, class_image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in CLASSES:
            (tmp_path / "big" / split / name).mkdir(parents=True)
            for i in range(4):
                class_image(name, rng, size=64).save(tmp_path / "big" / split / name / f"{i}.png")
    big = recipe(tmp_path / "big", augment={"crop_scale": [0.25, 1.0]})
    prepared = prepare_data(big, processor, seed=0)
    assert streamed_data.crop_loss(prepared, big) == (
        "training crops (scale 0.25-1) are cut from the images as cached, 32×32: the smallest is 16×16 pixels "
        "scaled up to the model's size; cut from the originals (about 64×64) it would have 32×32; "
        "data.streaming true crops from the originals"
    )
    small = recipe(make_image_folder(tmp_path / "small", per_class=4))  # 24 px images are cached whole
    assert streamed_data.crop_loss(prepare_data(small, processor, seed=0), small) is None
