"""A LoRA run through the command line: the merged model loads without peft, gives the adapted
model's logits, and resumes bitwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.models import classifier as model_lib
from finetune.models import lora
from finetune.recipe import ModelConfig
from tests.helpers import ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import CLASSES, make_image_folder

#: A Python prelude that makes `peft` look uninstalled, as on a machine that only runs the model.
NO_PEFT = "import sys; sys.modules['peft'] = None\n"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_vit) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A 3-epoch LoRA run through the command line, every checkpoint kept."""
    root = tmp_path_factory.mktemp("lora-e2e")
    images = make_image_folder(root / "images", per_class=16)
    recipe_path = write_recipe(
        root / "recipe.json", tiny_vit, images, root / "reference",
        model={"name_or_path": str(tiny_vit), "strategy": "lora", "lora_rank": 4, "lora_alpha": 8},
        training={"num_train_epochs": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 8, "seed": 0,
                  "use_cpu": True, "disable_tqdm": True, "save_total_limit": None},
    )
    result = run_cli("--recipe", str(recipe_path))
    return recipe_path, root / "reference", result


@pytest.mark.e2e
def test_lora_run_saves_a_plain_model_that_pipeline_loads_without_peft(lora_run) -> None:
    _, out, result = lora_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LoRA rank 4, alpha 8 (scale 2), dropout 0.1, on 6 layers (k_proj, q_proj, v_proj)" in result.stderr
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert (out / "checkpoint-6" / "adapter_model.safetensors").is_file()  # checkpoints hold the adapters
    card = (out / "README.md").read_text()
    assert "strategy-lora" in card and "- Adapters: LoRA rank 4, alpha 8 (scale 2)" in card
    assert "merged into the saved weights" in card
    script = NO_PEFT + (
        "import json\n"
        "from transformers.utils import is_peft_available\n"
        "assert not is_peft_available()\n"
        "from PIL import Image\n"
        "from transformers import pipeline\n"
        f"classifier = pipeline('image-classification', model={str(out)!r})\n"
        "print(json.dumps(classifier(Image.new('RGB', (24, 24), (230, 20, 20)))))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    labels = [row["label"] for row in json.loads(run.stdout.strip().splitlines()[-1])]
    assert sorted(labels) == sorted(CLASSES)


@pytest.mark.e2e
def test_saved_model_gives_the_logits_of_the_adapted_model_it_was_merged_from(lora_run) -> None:
    from transformers import AutoModelForImageClassification

    recipe_path, out, result = lora_run
    assert result.returncode == 0, result.stderr[-3000:]
    saved = AutoModelForImageClassification.from_pretrained(out)
    names = [saved.config.id2label[i] for i in range(saved.config.num_labels)]
    cfg = ModelConfig(**json.loads((out / "recipe.json").read_text())["model"])
    adapted = model_lib.load_model(cfg, names, model_lib.load_processor(cfg, None)).model
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    lora.load_checkpoint(adapted, last)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            saved.eval()(pixel_values=pixels).logits, adapted.eval()(pixel_values=pixels).logits, atol=1e-5, rtol=1e-4
        )


@pytest.mark.e2e
def test_resuming_from_a_checkpoint_ends_bitwise_equal(lora_run, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    recipe_path, reference, result = lora_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "resumed"
    out.mkdir()
    # The folder as a run leaves it when stopped (kill -9) after its first epoch's checkpoint.
    for name in ("recipe.json", "data_report.json"):
        shutil.copy(reference / name, out / name)
    shutil.copytree(reference / "checkpoint-6", out / "checkpoint-6")
    again = run_cli("--recipe", str(recipe_path), "--set", f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-6'}" in again.stderr
    assert "loaded adapters and head from" in again.stderr
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "a resumed LoRA run must end where an uninterrupted one does"
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == json.loads(
        (reference / "eval_results.json").read_text()
    )["eval_accuracy"]
