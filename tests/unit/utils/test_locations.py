"""locations.py: which model and data names are local paths."""

from __future__ import annotations

import pytest

from finetune.utils.locations import looks_like_path


@pytest.mark.parametrize(
    "name, is_path",
    [("google/vit-base-patch16-224", False), ("resnet18", False), ("timm/resnet18.a1_in1k", False),
     ("./vit", True), ("/models/vit", True), ("~/vit", True), ("a/b/c", True), ("..", True)],
)
def test_path_like_names(name: str, is_path: bool) -> None:
    assert looks_like_path(name) is is_path
