"""``finetune inspect`` on multi-label data: duplicates, leakage, outliers and class balance as for single-label data, the label check skipped with one line in the log and the report."""

from __future__ import annotations

import csv
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from finetune import data
from finetune.inspection import report
from finetune.inspection import run as inspect_run
from finetune.inspection.parts import MULTI_LABEL_NOTE
from finetune.recipe import recipe_from_dict
from tests.helpers.multi_label import write_multi_label_set


def hashed_features(model_cfg, class_names, processor, datasets, *, mirror, batch_size=64, device=None, args=None):
    """In place of the backbone: 16 numbers drawn from each image's pixels' hash."""
    from finetune.probe.backbone import BackboneFeatures

    out = []
    for dataset in datasets:
        rows = data.FastRows(dataset)
        pixels = rows.__getitems__(list(range(len(rows)))).collated["pixel_values"].numpy()
        out.append(torch.stack([
            torch.from_numpy(np.random.default_rng(int.from_bytes(hashlib.blake2b(p.tobytes(), digest_size=8).digest(), "little"))
                             .normal(0, 1, 16)).float()
            for p in pixels
        ]))
    return BackboneFeatures(out, "test", 0.0, 0, mirror)


def test_a_multi_label_set_is_inspected_without_the_label_check(tmp_path: Path, tiny_vit: Path, monkeypatch, caplog) -> None:
    written = write_multi_label_set(tmp_path / "ml", "csv", n_train=32, n_test=12)
    # Test image 1 is a copy of training image 5: a leak, found by its pixels.
    shutil.copyfile(written.images["train"][5], written.images["test"][1])
    recipe = recipe_from_dict({
        "description": "d", "model": {"name_or_path": str(tiny_vit)}, "output_dir": str(tmp_path / "out"),
        "data": {"dataset": written.dataset, "validation_fraction": 0.2},
    })
    monkeypatch.setattr(inspect_run, "backbone_features", hashed_features)
    with caplog.at_level(logging.INFO, logger="finetune"):
        findings, folder = inspect_run.run_inspect(recipe, inspect_run.Options())
    assert any(MULTI_LABEL_NOTE in r.getMessage() for r in caplog.records)
    assert findings.oof is None and findings.issues == {} and MULTI_LABEL_NOTE in findings.notes
    training, evaluation = findings.parts
    assert training.multi_label and training.labels.shape == (32, 4)
    # The leak is found, and its row names both images' label sets.
    leaked, pairs = findings.leaks[1]
    assert bool(leaked.exact[1]) and any(p.b == 1 and p.kind == "exact" for p in pairs)
    with open(folder / "duplicates.csv") as f:
        rows = list(csv.DictReader(f))
    leak = next(r for r in rows if r["where"].endswith("→ test") and r["kind"] == "exact")
    assert leak["label_a"] == ";".join(written.labels["train"][5]) and leak["label_b"] == ";".join(written.labels["test"][1])
    assert leak["same_label"] == str(written.labels["train"][5] == written.labels["test"][1])
    # Class balance counts each class of an image.
    with open(folder / "class_balance.csv") as f:
        balance = {r["class"]: int(r["test"]) for r in csv.DictReader(f)}
    assert balance == {c: sum(c in s for s in written.labels["test"]) for c in written.classes}
    # No label check: an empty table, and the report says why.
    with open(folder / "label_issues.csv") as f:
        assert len(list(csv.reader(f))) == 1
    text = (folder / "report.md").read_text()
    assert f"Not checked: {MULTI_LABEL_NOTE}." in text and "not checked" in text
    summary = report.summary(findings)
    assert summary["settings"]["probe_l2"] is None and all("label_issues" not in p for p in summary["parts"])
    # Outliers: each image against the nearest centre, and its own classes' nearest (NaN for none).
    own = findings.centres[1].own
    none = [i for i, s in enumerate(written.labels["test"]) if not s]
    assert none and np.isnan(own[none]).all() and not np.isnan(np.delete(own, none)).any()
