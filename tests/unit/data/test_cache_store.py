"""finetune cache: the decode pass indexes its cache (data set, runs, pieces, last use); `list`
shows each entry, `remove` deletes exactly the chosen entries' own files, with a dry run, and
nothing outside them (other caches, the data set's own files, a user's file, a link's target)."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from finetune import data
from finetune.cli.main import main
from finetune.data import cache_store


@pytest.fixture(autouse=True)
def own_index(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "finetune-cache"))
    return tmp_path / "finetune-cache"


def _fake_cache(folder: Path, fingerprint: str, shards: int = 0, size: int = 1000) -> list[Path]:
    """The files a decode pass leaves: one per piece, or a piece's shards (several workers)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"cache-{fingerprint}.arrow"] if not shards else [
        f"cache-{fingerprint}_{r:05d}_of_{shards:05d}.arrow" for r in range(shards)
    ]
    for name in names:
        (folder / name).write_bytes(b"\0" * size)
    return [folder / n for n in names]


def _entries(tmp_path: Path) -> dict[str, list[Path]]:
    """Three indexed caches in one datasets folder, beside files that are not theirs."""
    folder = tmp_path / "hf" / "photos" / "default" / "0.0.0" / "abc"
    made = {
        "old": _fake_cache(folder, "a" * 32) + _fake_cache(folder, "b" * 32, shards=2),
        "gone": _fake_cache(folder, "c" * 32),
        "kept": _fake_cache(folder, "d" * 32, size=5000),
    }
    run_kept = tmp_path / "runs" / "kept"
    run_kept.mkdir(parents=True)
    owners = {"old": tmp_path / "runs" / "old", "gone": tmp_path / "runs" / "gone", "kept": run_kept}
    (tmp_path / "runs" / "old").mkdir()
    for name, files in made.items():
        fingerprints = sorted({f.name[6:38] for f in files})
        cache_store.record(name, str(folder), fingerprints, cache_store.Owner("photos", str(owners[name])), "train", 7)
    old = cache_store.index_folder() / "old.json"
    raw = json.loads(old.read_text())
    raw["last_used"] = (datetime.now() - timedelta(days=40)).isoformat(timespec="seconds")
    old.write_text(json.dumps(raw))
    # Not theirs: the data set's own table, another tool's map cache, a user's file, and a
    # link named like an entry's file whose target is outside.
    (folder / "photos-train.arrow").write_bytes(b"table")
    (folder / "dataset_info.json").write_text("{}")
    (folder / f"cache-{'e' * 32}.arrow").write_bytes(b"someone else's map")
    (folder / "notes.txt").write_text("mine")
    precious = tmp_path / "precious.arrow"
    precious.write_bytes(b"do not touch")
    (folder / f"cache-{'d' * 32}_00000_of_00001.arrow").symlink_to(precious)
    return made


def _run(capsys, *argv: str) -> str:
    assert main(["cache", *argv]) == 0
    return capsys.readouterr().out


def _left(tmp_path: Path) -> set[str]:
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()}


def test_list_shows_each_cache_with_its_size_data_set_runs_and_last_use(tmp_path: Path, capsys) -> None:
    _entries(tmp_path)
    (tmp_path / "runs" / "old").rmdir()
    out = _run(capsys, "list")
    lines = out.splitlines()
    assert len(lines) == 4 and "3 decode cache(s)" in lines[-1]
    assert "0.0 MB" in lines[0] and "train of photos" in lines[0]
    assert f"runs: {tmp_path / 'runs' / 'kept'} " in out and f"{tmp_path / 'runs' / 'gone'} (folder gone)" in out
    assert lines[-2].split("last used ")[1][:10] == (datetime.now() - timedelta(days=40)).date().isoformat()


@pytest.mark.parametrize(
    "argv, removed",
    [(["--run", "runs/gone"], {"gone"}), (["--older-than", "30"], {"old"}), (["--orphaned"], {"gone"}),
     (["--all"], {"old", "gone", "kept"})],
)
def test_remove_deletes_exactly_the_chosen_entries_files(tmp_path: Path, capsys, argv, removed, monkeypatch) -> None:
    made = _entries(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _left(tmp_path)
    dry = _run(capsys, "remove", *argv, "--dry-run")
    assert _left(tmp_path) == before and "nothing was deleted" in dry  # a dry run removes nothing
    out = _run(capsys, "remove", *argv)
    assert f"removed {len(removed)} decode cache(s)" in out
    gone = {str(f.relative_to(tmp_path)) for name in removed for f in made[name]}
    gone |= {str((cache_store.index_folder() / f"{name}.json").relative_to(tmp_path)) for name in removed}
    assert _left(tmp_path) == before - gone
    assert (tmp_path / "precious.arrow").read_bytes() == b"do not touch"
    assert {e.key for e in cache_store.entries()} == {"old", "gone", "kept"} - removed


def test_remove_of_a_run_that_used_no_cache_removes_nothing(tmp_path: Path, capsys) -> None:
    _entries(tmp_path)
    before = _left(tmp_path)
    assert "no decode cache for" in _run(capsys, "remove", "--run", str(tmp_path / "elsewhere"))
    assert _left(tmp_path) == before


def test_a_decode_pass_indexes_its_cache_and_remove_deletes_exactly_it(tmp_path: Path, tiny_vit, capsys) -> None:
    from transformers import AutoImageProcessor

    rng = np.random.default_rng(0)
    images = []
    for _ in range(6):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    Dataset.from_dict({"image": images, "label": [0, 1] * 3}, features=features).save_to_disk(str(tmp_path / "set"))
    split = load_from_disk(str(tmp_path / "set"))
    run = tmp_path / "run"
    decoded = data.decode(split, AutoImageProcessor.from_pretrained(tiny_vit), "image", "label", None,
                          "decoding train", owner=data.CacheOwner("my-set", str(run)))
    written = {Path(f["filename"]) for f in decoded.dataset.cache_files if "cache-" in f["filename"]}
    (entry,) = cache_store.entries()
    assert set(entry.files()) == written and entry.runs == [str(run.resolve())]
    assert (entry.dataset, entry.split, entry.images) == ("my-set", "train", 6)
    before = _left(tmp_path)
    _run(capsys, "remove", "--run", str(run))
    assert _left(tmp_path) == before - {str(p.relative_to(tmp_path)) for p in written} - {
        str(entry.path.relative_to(tmp_path))
    }
    assert load_from_disk(str(tmp_path / "set")).num_rows == 6  # the data set itself is untouched


def test_only_the_temporaries_this_process_has_open_in_a_datasets_cache_are_removed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "dataset_info.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ours, other, not_cache, named = cache / "tmpab12cd34", cache / "tmpzz99yy88", elsewhere / "tmpqq11ww22", cache / "keep.arrow"
    for path in (other, named):
        path.write_bytes(b"x")
    handles = [open(path, "wb") for path in (ours, not_cache, named)]
    try:
        cache_store.remove_open_temporaries()
        assert not ours.exists() and other.exists() and not_cache.exists() and named.exists()
    finally:
        for handle in handles:
            handle.close()
