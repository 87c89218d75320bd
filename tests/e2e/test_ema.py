"""The EMA of the weights in the Trainer: its checkpoints, the evaluation of the average, the best
checkpoint, and exact resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from finetune.training.ema import EMA_NAME
from tests.helpers.images import make_image_folder


@pytest.fixture(scope="module")
def rows(tmp_path_factory, tiny_vit):
    from datasets import load_dataset
    from transformers import AutoImageProcessor

    from finetune import data

    root = tmp_path_factory.mktemp("ema-data")
    raw = load_dataset(str(make_image_folder(root / "images", per_class=4, splits=("train",))))["train"]
    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    return processor, data.FastRows.wrap(data.decode(raw, processor, "image", "label", None, "decoding").dataset)


def _trainer(tiny_vit: Path, rows, out: Path, **training):
    from transformers import AutoModelForImageClassification

    from finetune import data
    from finetune.recipe import recipe_from_dict
    from finetune.training.arguments import training_arguments
    from finetune.training.trainer import FinetuneTrainer, trainer_options

    processor, split = rows
    recipe = recipe_from_dict({
        "description": "d", "model": {"name_or_path": str(tiny_vit)}, "output_dir": str(out),
        # Mixup and the balanced sampler on too: all the training's randomness must resume exactly.
        "data": {"dataset": "x", "sampler": "balanced", "augment": {"crop_scale": [0.7, 1.0], "mixup_alpha": 0.4}},
        "training": {"use_cpu": True, "per_device_train_batch_size": 4, "num_train_epochs": 3, "learning_rate": 0.01,
                     "seed": 0, "disable_tqdm": True, "save_total_limit": None, "ema_decay": 0.8, **training},
    })
    return FinetuneTrainer(
        model=AutoModelForImageClassification.from_pretrained(tiny_vit), args=training_arguments(recipe),
        train_dataset=split, eval_dataset=split, data_collator=data.collate,
        batch_transform=data.BatchTransform.for_processor(processor, recipe.data.augment), **trainer_options(recipe),
    )


def _saved(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.fixture(scope="module")
def uninterrupted(tiny_vit, rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "reference"
    trainer = _trainer(tiny_vit, rows, out)
    trainer.train()
    return trainer, out


@pytest.mark.e2e
def test_checkpoints_hold_the_average_and_the_final_model_is_it(uninterrupted) -> None:
    trainer, out = uninterrupted
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    assert all((p / EMA_NAME).is_file() for p in checkpoints)
    final = trainer.model.state_dict()
    average = _saved(checkpoints[-1] / EMA_NAME)
    assert all(torch.equal(final[k], average[k]) for k in final)
    # The checkpoint's training weights are not the average (else this test could not fail).
    training = _saved(checkpoints[-1] / "model.safetensors")
    assert not torch.equal(training["classifier.weight"], final["classifier.weight"])


def test_evaluation_in_training_scores_the_average(uninterrupted) -> None:
    trainer, _ = uninterrupted
    last = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h][-1]
    assert trainer.evaluate()["eval_loss"] == pytest.approx(last, abs=1e-6)  # the model is the average now


@pytest.mark.e2e
def test_a_resumed_run_ends_bit_for_bit_as_an_uninterrupted_one(uninterrupted, tiny_vit, rows, tmp_path) -> None:
    reference, out = uninterrupted
    resumed_out = tmp_path / "resumed"
    resumed_out.mkdir()
    shutil.copytree(out / "checkpoint-3", resumed_out / "checkpoint-3")  # as after a kill in epoch 2
    trainer = _trainer(tiny_vit, rows, resumed_out)
    trainer.train(resume_from_checkpoint=str(resumed_out / "checkpoint-3"))
    ours, theirs = trainer.model.state_dict(), reference.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "the resumed run's average differs"
    for name in ("checkpoint-6", "checkpoint-9"):
        a, b = _saved(resumed_out / name / EMA_NAME), _saved(out / name / EMA_NAME)
        assert all(torch.equal(a[k], b[k]) for k in b), name


@pytest.mark.e2e
def test_the_best_checkpoint_is_chosen_by_and_gives_its_average(tiny_vit, rows, tmp_path) -> None:
    trainer = _trainer(tiny_vit, rows, tmp_path / "best", load_best_model_at_end=True, metric_for_best_model="loss",
                       learning_rate=0.05)
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    average = _saved(best / EMA_NAME)
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], average[k]) for k in final)
    scores = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    assert int(best.name.split("-")[1]) == min(scores, key=scores.get)
