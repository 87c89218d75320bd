"""Progress bars of finetune's own passes: shown where the Trainer shows its own, silent elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from finetune.utils import progress


@pytest.mark.parametrize(
    "disable_tqdm, process_index, shown",
    [(False, 0, True), (None, 0, True), (False, 1, False), (False, 3, False), (True, 0, False), (True, 1, False)],
)
def test_bar_only_on_rank_zero_and_only_without_disable_tqdm(disable_tqdm, process_index, shown) -> None:
    assert progress.shows_progress(disable_tqdm, process_index) is shown


@pytest.mark.parametrize("process_index, shown", [(0, True), (1, False)])
def test_bar_writes_to_stderr_on_rank_zero_only(process_index: int, shown: bool, capsys) -> None:
    args = SimpleNamespace(disable_tqdm=False, process_index=process_index)
    with progress.bar(args, total=5, desc="pass") as bar:
        bar.update(5)
    err = capsys.readouterr().err
    assert ("pass" in err and "5/5" in err and "img/s" in err) is shown
    assert shown or err == ""


@pytest.mark.parametrize("process_index, disabled", [(2, True), (0, False), (None, False)])
def test_rank_given_outside_a_trainer_decides(process_index, disabled: bool) -> None:
    # compute_features passes accelerate's rank when it runs without TrainingArguments.
    with progress.bar(None, total=1, desc="pass", process_index=process_index) as bar:
        assert bar.disable is disabled
