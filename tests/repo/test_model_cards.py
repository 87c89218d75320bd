"""model_cards/quickstart/ is the card a run of the shipped quickstart recipe gets today:
finetune/publish/card.py's own ``write_card`` renders it again from that run's files, and the
result must equal the committed card (so a change to the template or to ``write_card`` shows
up in the example), and the run must be of the recipe as shipped.

After a deliberate change to the card, write the example again with
``python tests/repo/test_model_cards.py``; after a change to recipes/quickstart.json, run
the recipe again and copy its files into model_cards/quickstart/run/ (model_cards/README.md
says which)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "model_cards" / "quickstart"
RUN = EXAMPLE / "run"


def read(name: str):
    return json.loads((RUN / name).read_text(encoding="utf-8"))


def render(work: Path) -> str:
    """The card ``write_card`` writes for the example's run, rendered in ``work`` into
    ``outputs/quickstart/`` (the recipe's own output_dir, which the card's usage line names)."""
    from finetune.publish.card import CardFacts, write_card
    from finetune.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "quickstart.json")
    config, inputs, data = read("config.json"), read("card_inputs.json"), read("data_report.json")
    report = read("eval_report.json")
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))] if "id2label" in config else config["label_names"]
    out = Path(recipe.output_dir)
    here = Path.cwd()
    os.chdir(work)
    try:
        (work / out).mkdir(parents=True, exist_ok=True)
        for picture in ("confusion_matrix.png", "reliability.png"):
            if (EXAMPLE / picture).is_file():
                shutil.copy(EXAMPLE / picture, work / out / picture)
        facts = CardFacts(
            eval_metrics=read("eval_results.json"),
            train_metrics=read("train_results.json"),
            eval_name=report["split"],
            class_names=names,
            num_train=data["splits"]["train"]["images"],
            num_validation=data["splits"]["validation"]["images"],
            report=report,
            trainable=(inputs["trainable"], inputs["total"]),
            image_size=inputs["image_size"],
            augmentation=inputs["augmentation"],
            tta=inputs.get("tta"),
            calibration=read("calibration.json") if (RUN / "calibration.json").is_file() else None,
        )
        path = write_card(out, recipe, facts)
        return (work / path).read_text(encoding="utf-8")
    finally:
        os.chdir(here)


def test_the_example_is_a_run_of_the_shipped_recipe() -> None:
    from finetune.recipe import load_recipe, recipe_from_dict

    shipped = load_recipe(ROOT / "recipes" / "quickstart.json").to_dict()
    # Read through the schema: a key added to it since the run is at its default there, as it
    # would have been in the run (a key it no longer has is an error).
    assert recipe_from_dict(read("recipe.json")).to_dict() == shipped, (
        "recipes/quickstart.json changed since the example card's run: run it again "
        "(accelerate launch finetune/run.py --recipe recipes/quickstart.json) and copy its files into model_cards/quickstart/run/"
    )


def test_the_example_card_is_what_write_card_renders(tmp_path: Path) -> None:
    committed = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    assert render(tmp_path) == committed, (
        "model_cards/quickstart/README.md is not what finetune/publish/card.py renders today; "
        "if the change is meant, write it again: python tests/repo/test_model_cards.py"
    )


def test_the_card_carries_the_runs_numbers() -> None:
    """Not only equal to itself: the committed card states the run's test accuracy and counts."""
    card = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    scores, data = read("eval_results.json"), read("data_report.json")
    assert f"| Accuracy | {scores['eval_accuracy']:.4f} |" in card
    assert f"value: {scores['eval_accuracy']}" in card  # the Hub's model-index
    assert f"{data['splits']['train']['images']} training images" in card


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as work:
        (EXAMPLE / "README.md").write_text(render(Path(work)), encoding="utf-8")
    print(f"wrote {(EXAMPLE / 'README.md').relative_to(ROOT)}")
