"""Data: loading, columns, honest seeded splits, the one-off decode, batch transforms."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from finetune import data
from finetune.data import sources
from finetune.recipe import AugmentConfig, DataConfig
from tests.helpers.data import cfg, labelled
from tests.helpers.images import CLASSES, class_image, make_image_folder, odd_images, png_claiming

# ------------------------------------------------------------------------- samplers


def test_stratified_sample_keeps_class_shares_and_is_seeded() -> None:
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    idx = data.stratified_sample(labels, 100, seed=3)
    assert len(idx) == 100 == len(set(idx.tolist()))
    assert np.bincount(labels[idx]).tolist() == [50, 30, 20]
    assert np.array_equal(idx, data.stratified_sample(labels, 100, seed=3))
    assert not np.array_equal(idx, data.stratified_sample(labels, 100, seed=4))


def test_balanced_sample_spreads_evenly_and_gives_shortfall_to_others() -> None:
    labels = np.repeat([0, 1, 2], [100, 100, 5])
    idx = data.balanced_sample(labels, 60, seed=0)
    assert np.bincount(labels[idx]).tolist() == [28, 27, 5] or np.bincount(labels[idx]).tolist() == [27, 28, 5]
    kshot = data.balanced_sample(labels, None, seed=0, per_class=4)
    assert np.bincount(labels[kshot]).tolist() == [4, 4, 4]
    assert np.array_equal(kshot, data.balanced_sample(labels, None, seed=0, per_class=4))


# --------------------------------------------------------------------------- splits


def test_validation_piece_is_stratified_disjoint_and_reproducible() -> None:
    raw = labelled([30, 20, 10])
    a = data.make_splits(raw, cfg(validation_fraction=0.2), seed=7)
    b = data.make_splits(raw, cfg(validation_fraction=0.2), seed=7)
    assert len(a.validation) == 12 and len(a.train) == 48
    assert np.bincount(np.asarray(a.validation["label"])).tolist() == [6, 4, 2]
    assert a.validation["label"][:] == b.validation["label"][:]
    assert a.eval_name == "test" and len(a.eval) == len(raw["test"])
    # The validation piece is never the eval split.
    assert a.validation is not a.eval


def test_kshot_validation_comes_from_the_rest_of_train() -> None:
    raw = labelled([20, 20, 20])
    raw["train"] = raw["train"].add_column("row", list(range(60)))
    s = data.make_splits(raw, cfg(samples_per_class=4, validation_fraction=0.5), seed=1)
    train_rows, val_rows = set(s.train["row"]), set(s.validation["row"])
    assert len(train_rows) == 12 and np.bincount(np.asarray(s.train["label"])).tolist() == [4, 4, 4]
    assert len(val_rows) == 6 and not train_rows & val_rows
    again = data.make_splits(raw, cfg(samples_per_class=4, validation_fraction=0.5), seed=1)
    assert set(again.train["row"]) == train_rows and set(again.validation["row"]) == val_rows


def test_max_samples_are_class_balanced() -> None:
    raw = labelled([40, 40, 40])
    s = data.make_splits(raw, cfg(max_train_samples=30, max_eval_samples=9, validation_fraction=0.1), seed=0)
    assert np.bincount(np.asarray(s.train["label"])).tolist() == [10, 10, 10]
    assert np.bincount(np.asarray(s.eval["label"])).tolist() == [3, 3, 3]
    assert len(s.validation) == 3


def test_eval_split_null_reports_the_validation_piece() -> None:
    raw = labelled([10, 10, 10])
    s = data.make_splits(raw, cfg(eval_split=None, validation_fraction=0.3), seed=0)
    assert s.eval is s.validation and "validation piece" in s.eval_name


def test_split_errors_name_the_fix() -> None:
    raw = labelled([5, 5])
    with pytest.raises(data.DataError, match="data.eval_split: 'valid' is not a split.*it has: train, test"):
        data.make_splits(raw, cfg(eval_split="valid"), seed=0)
    with pytest.raises(data.DataError, match="names the training split"):
        data.make_splits(raw, cfg(eval_split="train"), seed=0)


def _class_folder(root: Path, counts: dict[str, int]) -> Path:
    """An image folder (one sub-folder per class) with ``counts`` images per class."""
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.4])
def test_a_class_with_one_image_keeps_it_for_training(tmp_path: Path, fraction: float) -> None:
    """Class a's only image and one of b's two stay in train; the validation piece stays at
    round(fraction × images), made up from the other classes, and the notes name a."""
    counts = {"a": 1, "b": 2, "c": 11, "d": 11, "e": 11, "f": 11}
    root = _class_folder(tmp_path / "imgs", counts)
    c = cfg(dataset=str(root), eval_split=None, validation_fraction=fraction)
    s = data.make_splits(data.load_raw(c), c, seed=0)
    train = np.bincount(np.asarray(s.train["label"][:]), minlength=6)
    val = np.bincount(np.asarray(s.validation["label"][:]), minlength=6)
    assert s.class_names == list(counts)
    assert (train >= 1).all() and val[0] == 0 and val[1] <= 1, (train, val)
    assert val.sum() == round(fraction * 47) and (train + val).tolist() == list(counts.values())
    assert any("class(es) a have no validation images" in note for note in s.notes), s.notes
    again = data.make_splits(data.load_raw(c), c, seed=0)
    assert again.validation["label"][:] == s.validation["label"][:]


def test_the_validation_piece_keeps_a_training_image_of_every_class() -> None:
    """Over many class sizes and fractions: every class keeps one training image, the piece
    is as large as that allows, a sample no cap touches is the plain largest-remainder one
    (the splits of existing runs do not move), and it is a function of labels and seed."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(1, 15, size=rng.integers(2, 9))
        labels = np.repeat(np.arange(len(sizes)), sizes)
        n = int(round(rng.uniform(0.05, 0.9) * len(labels)))
        seed = int(rng.integers(1000))
        idx = data.stratified_sample(labels, n, seed, keep=1)
        taken = np.bincount(labels[idx], minlength=len(sizes))
        assert len(set(idx.tolist())) == len(idx) == min(n, int((sizes - 1).sum()))
        assert (taken <= sizes - 1).all(), (sizes, taken)
        assert np.array_equal(idx, data.stratified_sample(labels, n, seed, keep=1))
        plain = data.stratified_sample(labels, n, seed)
        if (np.bincount(labels[plain], minlength=len(sizes)) <= sizes - 1).all():
            assert np.array_equal(idx, plain)


def test_a_capped_class_gives_its_share_to_the_classes_with_room() -> None:
    labels = np.repeat(np.arange(6), [1, 2, 11, 11, 11, 11])
    plain = data.stratified_sample(labels, 14, seed=0)
    assert np.bincount(labels[plain]).tolist() == [1, 1, 3, 3, 3, 3]  # a's only image sampled
    kept = data.stratified_sample(labels, 14, seed=0, keep=1)
    assert np.bincount(labels[kept], minlength=6).tolist() == [0, 1, 4, 3, 3, 3]


def test_split_errors_name_their_real_cause(tmp_path: Path) -> None:
    singles = labelled([1, 1, 1])
    with pytest.raises(data.DataError, match="every class has a single image, which training needs"):
        data.make_splits(singles, cfg(validation_fraction=0.5), seed=0)
    with pytest.raises(data.DataError, match="max_train_samples: 2 is fewer than the 3 classes.*at least 3"):
        data.make_splits(labelled([5, 5, 5]), cfg(max_train_samples=2), seed=0)


def test_empty_class_reason_names_unreadable_files_or_absent_classes() -> None:
    s = data.make_splits(labelled([6, 6, 6]), cfg(validation_fraction=0.2), seed=0)
    kept = np.asarray(s.train["label"][:])
    assert data.empty_class_reason(s, kept) is None
    reason = data.empty_class_reason(s, kept[kept != 1])
    assert reason is not None
    assert reason.startswith("data: every training image of class(es) c1 (5 images) is unreadable")
    assert "data_report.json" in reason and "\n" not in reason
    # A train piece without any image of a class (not one make_splits gives) says that instead.
    s.train = s.train.filter(lambda row: row["label"] != 2)
    kept = np.asarray(s.train["label"][:])
    assert data.empty_class_reason(s, kept) == "data: class(es) c2 have no training images; add images or remove the class"


# -------------------------------------------------------------------------- columns


def test_columns_found_from_features_and_errors_list_columns() -> None:
    raw = labelled([3, 3])
    assert data.find_columns(raw["train"], cfg()) == ("image", "label")
    two = raw["train"].add_column("other", [0] * 6).cast_column("other", ClassLabel(names=["a", "b"]))
    with pytest.raises(data.DataError, match="data.label_column: .*several candidates: label, other.*one of"):
        data.find_columns(two, cfg())
    with pytest.raises(data.DataError, match="no column 'lbl' in the data; columns are: image, label"):
        data.find_columns(raw["train"], cfg(label_column="lbl"))


def test_string_labels_become_classes_and_eval_is_mapped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        name = CLASSES[i % 3]
        class_image(name, rng, 8).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{name}")
    csv = tmp_path / "data.csv"
    csv.write_text("file,species\n" + "\n".join(rows) + "\n")
    raw = data.load_raw(cfg(dataset=str(csv)))
    s = data.make_splits(raw, cfg(dataset=str(csv), eval_split=None, validation_fraction=0.25), seed=0)
    assert (s.image_column, s.label_column) == ("file", "species")
    assert s.class_names == sorted(CLASSES)


def test_eval_classes_unknown_to_train_fail() -> None:
    train = Dataset.from_dict({"image": ["a.png"] * 4, "label": ["cat", "dog", "cat", "dog"]})
    test = Dataset.from_dict({"image": ["a.png"] * 2, "label": ["cat", "bird"]})
    with pytest.raises(data.DataError, match="split 'test' has classes that train does not: bird"):
        data.encode_labels(train, {"test": test}, "label")


def test_one_class_fails() -> None:
    train = Dataset.from_dict({"image": ["a.png"] * 3, "label": ["cat"] * 3})
    with pytest.raises(data.DataError, match="at least 2"):
        data.encode_labels(train, {}, "label")


def test_image_folder_with_split_folders(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=4)
    raw = data.load_raw(cfg(dataset=str(root)))
    assert set(raw) == {"train", "test"}
    s = data.make_splits(raw, cfg(dataset=str(root), validation_fraction=0.25), seed=0)
    assert s.class_names == sorted(CLASSES)  # never "train"/"test" as classes


def test_missing_dataset_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="no such"):
        data.load_raw(cfg(dataset=str(tmp_path / "nope")))


def test_a_folder_without_images_says_so(tmp_path: Path) -> None:
    """Text and PDF files only (top level or under train/ and test/), nothing, or only
    system files: the error says no image was found, not which column might hold one."""
    docs = tmp_path / "docs"
    for name in ("train/notes.txt", "train/paper.pdf", "test/readme.txt"):
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text("not an image")
    with pytest.raises(data.DataError) as err:
        data.load_raw(cfg(dataset=str(docs)))
    message = str(err.value)
    assert message.startswith(f"data.dataset: no image files found in '{docs}' (looked for .bmp, .gif, .jfif")
    assert "found 3 other file(s) such as test/readme.txt, train/notes.txt, train/paper.pdf" in message
    assert "one sub-folder per class" in message and "\n" not in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match=r"no image files found in .*empty.*; it is empty\)"):
        data.load_raw(cfg(dataset=str(empty)))
    junk = tmp_path / "junk"
    (junk / "__MACOSX").mkdir(parents=True)
    (junk / "__MACOSX" / "._a.jpg").write_bytes(b"x")
    (junk / ".DS_Store").write_bytes(b"x")
    (junk / "Thumbs.db").write_bytes(b"x")
    with pytest.raises(data.DataError, match=r"only hidden or system files, which are ignored: .*\.DS_Store"):
        data.load_raw(cfg(dataset=str(junk)))


def test_class_folders_reached_through_links_count(tmp_path: Path) -> None:
    """Class folders that are symbolic links count (a link back up does not loop)."""
    real = make_image_folder(tmp_path / "real", per_class=2, splits=("",))
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in CLASSES:
        (linked / name).symlink_to(real / name, target_is_directory=True)
    sources.check_holds_images(linked)
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "notes.txt").write_text("x")
    (loop / "up").symlink_to(loop, target_is_directory=True)
    with pytest.raises(data.DataError, match="found 1 other file"):
        sources.check_holds_images(loop)


def test_a_column_of_text_is_not_taken_for_images() -> None:
    text = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(data.DataError, match=r"no column holds images or image file paths \(columns: text, label\)"):
        data.find_columns(text, cfg())


# --------------------------------------------------------------------------- decode


@pytest.fixture(params=["tiny_vit", "tiny_resnet", "tiny_timm"])
def processor(request):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(request.getfixturevalue(request.param))


def test_decoded_pixels_match_the_processor(processor) -> None:
    raw = labelled([3, 3])
    decoded = data.decode(raw["train"], processor, "image", "label", None, "test")
    transform = data.BatchTransform.for_processor(processor, None)
    ours = transform(decoded.dataset[:]["pixel_values"], train=False)
    theirs = processor(images=[im.convert("RGB") for im in raw["train"]["image"]], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    # Same pixels to the rounding of uint8.
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_decode_takes_the_processors_uint8_way_and_it_gives_the_float_ways_bytes(processor) -> None:
    # The fast way (the processor's resize/crop with its float steps off, 10x faster) is the
    # one taken for ViT, ConvNeXt-style and timm processors, and gives the same bytes.
    decoder = data.Decoder(processor, "image", "label")
    assert decoder.way == "uint8"
    images = [im.convert("RGB") for im in labelled([3, 3], seed=5)["train"]["image"]]
    images.append(Image.fromarray(np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)))
    assert torch.equal(decoder._uint8(images), decoder._float(images))


def test_a_processor_that_ignores_the_switches_keeps_the_float_way(tiny_vit) -> None:
    from transformers import AutoImageProcessor

    real = AutoImageProcessor.from_pretrained(tiny_vit)

    class AlwaysNormalises:  # takes do_rescale / do_normalize but does not obey them
        image_mean, image_std, rescale_factor, do_rescale = real.image_mean, real.image_std, real.rescale_factor, True

        def __call__(self, images, return_tensors="pt", **ignored):
            return real(images=images, return_tensors=return_tensors)

    decoder = data.Decoder(AlwaysNormalises(), "image", "label")
    assert decoder.way == "float"
    images = [im.convert("RGB") for im in labelled([2, 2])["train"]["image"]]
    assert torch.equal(decoder.pixels(images), data.Decoder(real, "image", "label")._uint8(images))


def test_decode_sets_bad_files_aside(tmp_path: Path, processor) -> None:
    good = tmp_path / "good.png"
    class_image("red", np.random.default_rng(0)).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    buf = io.BytesIO()
    class_image("red", np.random.default_rng(0), 64).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    paths = [str(tmp_path / n) for n in ("good.png", "empty.png", "text.jpg", "truncated.jpg")]
    ds = Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]}).cast_column("image", ImageFeature())
    decoded = data.decode(ds, processor, "image", "label", None, "test")
    assert len(decoded.dataset) == 1
    assert sorted(Path(b["path"]).name for b in decoded.bad) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert all(b["reason"] for b in decoded.bad)


def test_decode_is_cached_by_fingerprint(processor) -> None:
    raw = labelled([3, 3])
    first = data.decode(raw["train"], processor, "image", "label", None, "a").dataset
    second = data.decode(raw["train"], processor, "image", "label", None, "b").dataset
    assert first._fingerprint == second._fingerprint


def test_a_channels_last_decode_gives_the_same_batches(processor) -> None:
    # A split that is randomly cropped every step is stored H×W×3, the layout of
    # torch's uint8 resize; FastRows still gives N×3×H×W batches of the same values.
    raw = labelled([3, 4])["train"]
    plain = data.decode(raw, processor, "image", "label", None, "chw").dataset
    last = data.decode(raw, processor, "image", "label", None, "hwc", channels_last=True).dataset
    assert data.pixel_column(plain) == "pixel_values" and data.pixel_column(last) == data.HWC_COLUMN
    assert last._fingerprint != plain._fingerprint  # two caches, never one read as the other
    assert data.image_size(last) == data.image_size(plain) == tuple(plain[0]["pixel_values"].shape[1:])
    indices = [6, 0, 3, 3, 1]
    a = data.collate(data.FastRows(plain).__getitems__(indices))
    b = data.collate(data.FastRows(last).__getitems__(indices))
    assert b["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    assert torch.equal(data.FastRows(last)[6]["pixel_values"], a["pixel_values"][0])
    # No bigger on disk: stored as H×W×3 Arrow would keep an offset for every pixel.
    assert last.data.nbytes <= plain.data.nbytes * 1.05


# --------------------------------------------------------------------- images to RGB


def test_every_kind_of_image_becomes_rgb() -> None:
    cases = odd_images()
    out = {name: data.to_rgb(data.open_image({"bytes": raw, "path": None})) for name, raw in cases.items()}
    assert all(im.mode == "RGB" for im in out.values())
    px = {name: np.asarray(im) for name, im in out.items()}
    assert (px["gray_alpha"] == 255).all() and (px["rgba"] == 255).all()  # transparent → white background
    assert (px["palette_transparent"] == 255).all()
    assert (px["16bit"] == 255).all() and (px["16bit_mid"] == 128).all()  # rescaled, not clipped
    assert tuple(px["animated"][0, 0]) == (255, 0, 0) or px["animated"][0, 0, 0] > 200  # first frame
    assert px["cmyk"][0, 0, 0] > 200 and px["cmyk"][0, 0, 1] < 60
    assert out["strip"].size == (1, 400)
    # EXIF 6 = rotate 90° clockwise to display: 40×20 becomes 20×40 with red on top.
    assert out["exif"].size == (20, 40)
    assert px["exif"][:20, :, 0].mean() > 200 and px["exif"][20:, :, 0].mean() < 50


def test_decompression_bomb_is_refused_without_changing_pillow() -> None:
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises((Image.DecompressionBombError, Image.DecompressionBombWarning)):
        data.open_image({"bytes": png_claiming(20000, 20000), "path": None})
    assert Image.MAX_IMAGE_PIXELS == limit


def test_odd_images_decode_to_the_model_size(processor) -> None:
    cases = odd_images()
    ds = Dataset.from_dict(
        {"image": [{"bytes": b, "path": f"{n}.bin"} for n, b in cases.items()], "label": [0] * len(cases)},
        features=Features({"image": ImageFeature(decode=False), "label": Value("int64")}),
    )
    decoded = data.decode(ds, processor, "image", "label", None, "odd")
    assert decoded.bad == [] and len(decoded.dataset) == len(cases)
    shape = decoded.dataset[0]["pixel_values"].shape
    assert shape[0] == 3 and all(d["pixel_values"].shape == shape for d in decoded.dataset)


# ------------------------------------------------------------------ batch transforms


def test_batch_transform_augments_each_image_independently() -> None:
    torch.manual_seed(0)
    pixels = torch.arange(2 * 3 * 16 * 16, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 16, 16)
    pixels = torch.cat([pixels[:1]] * 8)
    t = data.BatchTransform([0.5] * 3, [0.5] * 3, (16, 16), AugmentConfig(crop_scale=[0.3, 1.0], hflip=True))
    out = t(pixels, train=True)
    assert out.dtype == torch.float32 and out.shape == (8, 3, 16, 16)
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) > 1  # not one draw for the batch
    evaluated = t(pixels, train=False)
    assert torch.allclose(evaluated[0], pixels[0].float() / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("preset", ["trivial_augment", "rand_augment", "auto_augment", "augmix"])
def test_augmentation_presets_and_random_erasing(preset: str) -> None:
    pixels = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
    channels_last = pixels.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    augment = AugmentConfig(crop_scale=[0.5, 1.0], hflip=True, preset=preset, random_erasing=1.0)
    t = data.BatchTransform([0.5] * 3, [0.25] * 3, (16, 16), augment)
    assert f"horizontal flip, {type(t.augment.transforms[2]).__name__}, random erasing (p=1)" in t.describe()
    out = t(pixels, train=True, seed=3).clone()
    assert out.shape == (6, 3, 16, 16)
    # Seeded like the rest (exact resume), the same from either cache layout.
    assert torch.equal(out, t(channels_last, train=True, seed=3)) and not torch.equal(out, t(pixels, train=True, seed=4))
    # Erasing comes after normalisation: each image has a rectangle of 0, the mean colour.
    assert all((image == 0).all(dim=0).sum() >= 4 for image in out)
    # Evaluation, and a transform without augmentation, only normalise.
    plain = (pixels.float() / 255 - 0.5) / 0.25
    assert torch.allclose(t(pixels, train=False), plain, atol=1e-5)
    bare = t.without_augmentation()
    assert not bare.augments and bare.describe() == "none" and t.augments
    assert torch.allclose(bare(pixels, train=True, seed=3), plain, atol=1e-5)


def test_batch_transform_reuses_its_buffer_only_when_nothing_can_read_it() -> None:
    t = data.BatchTransform([0.5] * 3, [0.5] * 3, (8, 8), None)
    batches = [torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8) for _ in range(5)]
    expect = [b.float() / 127.5 - 1 for b in batches]
    first = t(batches[0], train=False)
    second = t(batches[1], train=False)  # `first` is still held: another buffer
    assert first.data_ptr() != second.data_ptr()
    assert torch.allclose(first, expect[0], atol=1e-6) and torch.allclose(second, expect[1], atol=1e-6)
    address = first.data_ptr()
    del first
    third = t(batches[2], train=False)  # the first buffer is free again: reused
    assert third.data_ptr() == address and torch.allclose(second, expect[1], atol=1e-6)
    # An autograd graph that saved the batch keeps it: not overwritten before backward.
    del third, second  # both pooled buffers are free now
    weight = torch.randn(2, 3, 3, 3, requires_grad=True)
    saved = t(batches[3], train=False)
    saved_at = saved.data_ptr()
    loss = torch.nn.functional.conv2d(saved, weight).square().sum()
    del saved  # only the graph holds it now
    held = [t(batches[4], train=False) for _ in range(2)]
    assert saved_at not in {h.data_ptr() for h in held}
    loss.backward()
    weight_copy = weight.detach().clone().requires_grad_(True)  # the gradient from a private copy
    torch.nn.functional.conv2d(expect[3], weight_copy).square().sum().backward()
    assert torch.allclose(weight.grad, weight_copy.grad, atol=1e-4)
    assert all(torch.allclose(h, expect[4], atol=1e-6) for h in held)
    # A short last batch is the front of a full buffer; inference-mode batches never share
    # memory with ones that autograd may save.
    short = t(batches[0][:3], train=False)
    assert short.shape == (3, 3, 8, 8) and torch.allclose(short, expect[0][:3], atol=1e-6)
    with torch.inference_mode():
        inference = t(batches[1], train=False)
    assert inference.is_inference() and not short.is_inference()


def test_channels_last_batches_hold_the_same_values() -> None:
    pixels = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    augment = AugmentConfig(crop_scale=[0.3, 1.0], hflip=True)
    plain = data.BatchTransform([0.4] * 3, [0.2] * 3, (12, 12), augment)
    last = data.BatchTransform([0.4] * 3, [0.2] * 3, (12, 12), augment, channels_last=True)
    for train in (False, True):
        a, b = plain(pixels, train=train, seed=7), last(pixels, train=train, seed=7)
        assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(a, b)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_data_files_with_relative_image_paths(tmp_path: Path, suffix: str) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for i in range(9):
        name = CLASSES[i % 3]
        class_image(name, rng, 8).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": name})
    frame = pd.DataFrame(rows)
    file = tmp_path / f"data{suffix}"
    {".csv": lambda: frame.to_csv(file, index=False), ".jsonl": lambda: frame.to_json(file, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(file)}[suffix]()
    raw = data.load_raw(cfg(dataset=str(file)))
    s = data.make_splits(raw, cfg(dataset=str(file), eval_split=None, validation_fraction=0.34), seed=0)
    assert (s.image_column, s.label_column, s.class_names) == ("path", "label", sorted(CLASSES))
    from transformers import ViTImageProcessor

    decoded = data.decode(s.train, ViTImageProcessor(size={"height": 16, "width": 16}), "path", "label", None, "t")
    assert decoded.bad == [] and len(decoded.dataset) == 6


@pytest.mark.parametrize("name", ["./missing", "/no/such/folder", "a/b/c", "~/no-such-folder-here"])
def test_a_missing_local_data_folder_is_named_as_such(name: str) -> None:
    """A path-like name that does not exist never becomes a Hub lookup (offline or not)."""
    with pytest.raises(data.DataError, match=f"no such folder or file '{name}'"):
        data.load_raw(DataConfig(dataset=name))
