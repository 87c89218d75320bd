"""card.py: the model card template ships inside the package (model_cards/ shows a card rendered from it: tests/repo/test_model_cards.py)."""

from __future__ import annotations

from finetune.publish import card
from tests.helpers import ROOT


def test_template_is_in_the_package() -> None:
    # An installed wheel has only the package: the card must not read outside it.
    assert card.TEMPLATE.is_relative_to(ROOT / "finetune") and card.TEMPLATE.is_file()
