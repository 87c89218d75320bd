"""card.py: the model card template ships inside the package, and the documented copy matches it."""

from __future__ import annotations

from finetune.publish import card
from tests.helpers import ROOT


def test_template_is_in_the_package_and_the_documented_copy_is_identical() -> None:
    # An installed wheel has only the package: the card must not read outside it.
    assert card.TEMPLATE.is_relative_to(ROOT / "finetune") and card.TEMPLATE.is_file()
    documented = ROOT / "model_cards" / "template.md"
    assert documented.read_text(encoding="utf-8") == card.TEMPLATE.read_text(encoding="utf-8"), (
        "model_cards/template.md differs from finetune/templates/model_card.md (which the card uses); "
        "edit the package's template and copy it: cp finetune/templates/model_card.md model_cards/template.md"
    )
