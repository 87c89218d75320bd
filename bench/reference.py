"""The reference program: transformers' image-classification example design, as a script.

    python bench/reference.py --scenario '{"key": "a", ...}' --work DIR

It follows ``examples/pytorch/image-classification/run_image_classification.py``: per-image
PIL/torchvision transforms through ``Dataset.with_transform`` at every step, a stacking
collate function and a plain ``transformers.Trainer``, with the machine's default threads.
``bench/commands.py`` runs it as its users run the example (``python script.py``, timed from
the shell); ``bench/pipeline.py`` calls ``reference_train`` inside its controlled worker (what both
share is in ``bench/common.py``). It
takes two things from finetune so that the comparison is exact: the split indices
(``data.make_splits``, a pure function of the labels and the seed) and the resized image
processor (``model.load_processor``), from which it builds its own per-image transforms. It
prints one line ``BENCH_RESULT {json}`` with its accuracy and training time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULT_TAG, ROOT, Scenario, model_path, processor_for, same_splits, training_dict  # noqa: E402


def _reference_transforms(s: Scenario, processor):
    """The example's transforms: timm's own eval transform for a timm model; for an HF
    processor, Resize + CenterCrop (eval) or RandomResizedCrop + flip (train), then ToTensor
    and Normalize with the processor's statistics."""
    from torchvision import transforms as T

    if getattr(processor, "data_config", None) is not None:  # TimmWrapperImageProcessor
        evaluation = processor.val_transforms
        train_steps = list(evaluation.transforms)
    else:
        size = s.image_size
        normalize = T.Normalize(mean=processor.image_mean, std=processor.image_std)
        evaluation = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), normalize])
        train_steps = [T.Resize(size), T.CenterCrop(size), T.ToTensor(), normalize]
    if s.crop_scale is not None or s.hflip:
        head: list[Any] = []
        if s.crop_scale is not None:
            head.append(T.RandomResizedCrop(s.image_size, scale=tuple(s.crop_scale)))
        else:
            head += train_steps[:2]
        if s.hflip:
            head.append(T.RandomHorizontalFlip())
        train_steps = head + train_steps[-2:]
    return T.Compose(train_steps), evaluation


def with_transforms(s: Scenario, processor, splits):
    train_tf, eval_tf = _reference_transforms(s, processor)
    image, label = splits.image_column, splits.label_column

    def preprocess(transform):
        def apply(batch):
            batch["pixel_values"] = [transform(im.convert("RGB")) for im in batch[image]]
            return batch

        return apply

    def collate_fn(examples):
        import torch

        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e[label] for e in examples]),
        }

    train = splits.train.with_transform(preprocess(train_tf))
    validation = splits.validation.with_transform(preprocess(eval_tf)) if splits.validation is not None else None
    evaluation = splits.eval.with_transform(preprocess(eval_tf))
    return train, validation, evaluation, collate_fn


def reference_train(s: Scenario, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoModelForImageClassification, Trainer, TrainingArguments, set_seed

    start = time.perf_counter()
    splits = same_splits(s)
    processor = processor_for(s, work)
    train, validation, evaluation, collate_fn = with_transforms(s, processor, splits)
    names = splits.class_names
    set_seed(s.seed)
    from finetune.models import builtin

    model = AutoModelForImageClassification.from_pretrained(
        builtin.resolve_model(model_path(s, work)),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True,
    )
    if s.strategy == "linear_probe":
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        # Only a Linear learns, and a Linear is the same in eval mode: keep the frozen
        # backbone's batch norms on their ImageNet statistics.
        def keep_frozen_in_eval(module, args) -> None:
            module.eval()

        model.register_forward_pre_hook(keep_frozen_in_eval)

    def compute_metrics(p):
        return {"accuracy": float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(work / f"reference-{s.key}"),
        remove_unused_columns=False,  # with_transform needs the image column
        **training_dict(s),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
        processing_class=processor,
    )
    result = trainer.train()
    trainer.save_model()
    final = trainer.evaluate(evaluation)
    wall = time.perf_counter() - start
    runtime = float(result.metrics["train_runtime"])
    return {
        "wall_s": wall,
        "train_images_per_s": s.n_train * s.epochs / runtime,
        "accuracy": float(final["eval_accuracy"]),
        "train_runtime_s": runtime,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True, help="a bench/pipeline.py Scenario as JSON")
    parser.add_argument("--work", required=True, help="the work folder (models, outputs)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    result = reference_train(Scenario(**json.loads(args.scenario)), Path(args.work))
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
