"""Shared fixtures: tiny random models built from a config, generated image data, a small disk.

Everything here is made on the spot, offline, in a few seconds on CPU: a 2-layer, 32-wide
ViT, a 2-stage ResNet and a tiny timm model (through TimmWrapper), each saved with its
image processor like a Hub checkpoint; and image folders whose classes differ by colour and
shape so a model can learn them in a handful of steps. The functions that build them are in
tests/helpers/, which the tests import; this file is imported by pytest alone.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.images import make_image_folder
from tests.helpers.models import make_tiny_resnet, make_tiny_timm, make_tiny_vit
from tests.helpers.workers import pin_xdist_worker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pin_xdist_worker()

E2E = Path(__file__).resolve().parent / "e2e"


#: The test files that take longest, started first: pytest-xdist hands each worker the next
#: file as it finishes one (pyproject.toml's addopts keep the collection's order, where
#: xdist would sort the files by their number of tests and start these last), so a long file
#: begun near the end would leave the other workers idle until it is done.
LONGEST_FIRST = ("test_notebook.py", "test_distributed.py", "test_streaming.py")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e/ is marked e2e, so that ``-m "not e2e"`` leaves out all of
    them; the files of :data:`LONGEST_FIRST` go first."""
    for item in items:
        if E2E in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if item.path.parent == E2E and name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory) -> Path:
    return make_tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))


@pytest.fixture(scope="session")
def tiny_timm(tmp_path_factory) -> Path:
    return make_tiny_timm(tmp_path_factory.mktemp("tiny-timm"))


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB file system (tmpfs) to fill up, where mounting one is allowed (root in a
    container); the test is skipped elsewhere."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")
