"""Each private API that finetune/utils/compat.py uses still behaves as compat.py says it does."""

from __future__ import annotations

import inspect
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from datasets import Dataset
from datasets.table import Table
from transformers import Trainer, TrainingArguments

from finetune.training.trainer import FinetuneTrainer
from finetune.utils import compat


def _changed(library: str, version: str, what: str) -> str:
    return f"{library} {version} changed {what}; see finetune/compat.py"


def test_datasets_select_keeps_an_indices_mapping_to_physical_rows() -> None:
    ds = Dataset.from_dict({"x": list(range(10))})
    picked = ds.select([7, 2, 5])  # not contiguous: a mapping, not a slice of the table
    mapping = getattr(picked, "_indices", "absent")
    message = _changed(
        "datasets", datasets.__version__,
        f"Dataset._indices (now {type(mapping).__name__}; was a datasets.table.Table whose column 0 "
        "maps logical to physical rows)",
    )
    assert isinstance(mapping, Table), message
    rows = compat.physical_rows(picked)
    assert rows is not None and rows.tolist() == [7, 2, 5], message
    assert [picked.data.column("x")[int(i)].as_py() for i in rows] == picked["x"][:], message
    assert compat.physical_rows(ds) is None, _changed(
        "datasets", datasets.__version__, "Dataset._indices of an unselected dataset (was None)"
    )


def test_datasets_fingerprint_names_the_state_of_a_dataset() -> None:
    ds = Dataset.from_dict({"x": list(range(10))})
    before = getattr(ds, "_fingerprint", None)
    assert isinstance(before, str) and before, _changed(
        "datasets", datasets.__version__, f"Dataset._fingerprint (now {type(before).__name__}; was a str)"
    )
    assert compat.dataset_fingerprint(ds) == before

    def add_one(row):
        return {"x": row["x"] + 1}

    after = compat.dataset_fingerprint(ds.map(add_one))
    message = _changed(
        "datasets", datasets.__version__,
        "Dataset._fingerprint under map (it no longer changes with a transform, or differs between two "
        "identical ones, so decode caches would be read for the wrong data or never reused)",
    )
    assert after != before and after == compat.dataset_fingerprint(ds.map(add_one)), message


def test_torch_storage_use_count_sees_every_view() -> None:
    message = _changed(
        "torch", torch.__version__,
        "torch._C._storage_Use_Count (a tensor alone read 2 and each view of its storage one more), "
        "so BatchTransform's buffer pool would reuse or never reuse a batch wrongly",
    )
    buffer = torch.empty(4, 3, 2, 2)
    assert not compat.storage_shared(buffer), message
    batch = buffer[:3]  # BatchTransform hands out views like this one
    assert compat.storage_shared(buffer), message
    weight = torch.randn(2, 3, 1, 1, requires_grad=True)
    loss = torch.nn.functional.conv2d(batch, weight).sum()
    del batch  # only the autograd graph, which saved the view, holds it now
    assert compat.storage_shared(buffer), message
    del loss
    assert not compat.storage_shared(buffer), message
    array = buffer.numpy()
    assert compat.storage_shared(buffer), message
    del array
    assert not compat.storage_shared(buffer), message

# ------------------------------------------------------------------ transformers Trainer


TF = f"transformers {transformers.__version__}"


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trainer_still_loads_checkpoints_through_the_methods_compat_overrides() -> None:
    assert _parameters(Trainer._load_from_checkpoint) == ["self", "resume_from_checkpoint", "model"], (
        f"{TF} changed Trainer._load_from_checkpoint's parameters; see compat.load_from_checkpoint"
    )
    assert inspect.signature(Trainer._load_from_checkpoint).parameters["model"].default is None, (
        f"{TF} changed Trainer._load_from_checkpoint's model default; see compat.load_from_checkpoint"
    )
    assert _parameters(Trainer._load_best_model) == ["self"], (
        f"{TF} changed Trainer._load_best_model's parameters; see compat.load_best_model"
    )
    source = inspect.getsource(Trainer)
    assert "self._load_from_checkpoint(resume_from_checkpoint)" in source, (
        f"{TF} no longer resumes through Trainer._load_from_checkpoint; see compat.load_from_checkpoint"
    )
    assert "self._load_best_model()" in source, (
        f"{TF} no longer loads the best model through Trainer._load_best_model; see compat.load_best_model"
    )
    for name in ("_load_from_checkpoint", "_load_best_model"):
        assert _parameters(getattr(FinetuneTrainer, name)) == _parameters(getattr(Trainer, name)), name


def test_checkpoints_still_hold_legacy_key_names(tiny_vit: Path, tmp_path: Path) -> None:
    """The behaviour compat.reload_weights works around: if the saved names are the ones in
    memory, the Trainer's lenient reload loads every tensor and the workaround can go."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    model.save_pretrained(tmp_path / "saved")
    on_disk = set(load_file(tmp_path / "saved" / "model.safetensors"))
    in_memory = set(model.state_dict())
    assert on_disk != in_memory, (
        f"{TF} now saves ViT checkpoints with the key names it holds in memory; compat.reload_weights "
        "may no longer be needed; see compat.py"
    )


class _Recorder(torch.nn.Module):
    """A classifier whose forward takes **kwargs, like the HF and timm image classifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.seen: list[set[str]] = []

    def forward(self, pixel_values, labels=None, **kwargs):
        self.seen.append(set(kwargs))
        logits = self.linear(pixel_values)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_model_accepts_loss_kwargs_still_decides_what_the_loss_is_given(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    model = _Recorder()
    trainer = Trainer(model=model, args=args)
    assert getattr(trainer, "model_accepts_loss_kwargs", None) is True, (
        f"{TF} no longer sets Trainer.model_accepts_loss_kwargs from the forward signature; see "
        "compat.loss_is_a_batch_mean"
    )
    batch = {"pixel_values": torch.ones(2, 2), "labels": torch.tensor([0, 1])}
    trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2))
    assert model.seen[-1] == {"num_items_in_batch"}, (
        f"{TF} no longer passes num_items_in_batch to such a model; see compat.loss_is_a_batch_mean"
    )
    compat.loss_is_a_batch_mean(trainer)
    trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2))
    assert model.seen[-1] == set(), (
        f"{TF} ignores Trainer.model_accepts_loss_kwargs = False; see compat.loss_is_a_batch_mean"
    )
    for method in ("training_step", "compute_loss"):
        assert "self.model_accepts_loss_kwargs" in inspect.getsource(getattr(Trainer, method)), (
            f"{TF}: Trainer.{method} no longer reads model_accepts_loss_kwargs; see compat.loss_is_a_batch_mean"
        )


@pytest.mark.parametrize("name", ["is_fsdp_enabled", "is_deepspeed_enabled", "accelerator"])
def test_trainer_still_has_the_attributes_compat_reads(name: str, tmp_path: Path) -> None:
    trainer = Trainer(model=_Recorder(), args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert hasattr(trainer, name), f"{TF}: Trainer has no '{name}' any more; see compat.py"


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return 4

    def __iter__(self):
        return iter([3, 2, 1, 0])


def test_trainer_still_takes_its_train_sampler_from_get_train_sampler(tmp_path: Path) -> None:
    """compat.train_sampler: the Trainer asks ``_get_train_sampler(dataset)`` for the
    sampler, loads batches in its order, and the loader passes ``set_epoch`` on to it
    (what makes balance.BalancedSampler's epochs resume exactly)."""
    sampler = _EpochSampler()

    class Sampled(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return compat.train_sampler(sampler, train_dataset, super()._get_train_sampler)

    assert _parameters(Trainer._get_train_sampler) == ["self", "train_dataset"], (
        f"{TF} changed Trainer._get_train_sampler's parameters; see compat.train_sampler"
    )
    dataset = [{"pixel_values": torch.tensor([float(i), 0.0])} for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=2)
    loader = Sampled(model=_Recorder(), args=args, train_dataset=dataset).get_train_dataloader()
    assert [b["pixel_values"][:, 0].tolist() for b in loader] == [[3.0, 2.0], [1.0, 0.0]], (
        f"{TF} no longer builds the training loader from Trainer._get_train_sampler; see compat.train_sampler"
    )
    loader.set_epoch(5)
    assert sampler.epochs and sampler.epochs[-1] == 5, (
        f"{TF} / accelerate no longer pass set_epoch on to the training sampler; see compat.train_sampler"
    )
    plain = Trainer(model=_Recorder(), args=args, train_dataset=dataset)
    assert compat.train_sampler(None, dataset, plain._get_train_sampler) is not None


def test_checkpoints_still_save_the_model_before_the_trainer_state() -> None:
    """FinetuneTrainer.save_model writes the EMA beside a checkpoint's weights; it counts on
    trainer_state.json, which outputs.checkpoint_is_complete looks for, coming after it."""
    source = inspect.getsource(Trainer._save_checkpoint)
    model, state = source.find("self.save_model(output_dir"), source.find("TRAINER_STATE_NAME")
    assert 0 <= model < state, (
        f"{TF} no longer saves a checkpoint's model (save_model) before trainer_state.json; the EMA could "
        "be missing from a checkpoint that looks complete; see FinetuneTrainer.save_model"
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # DCP saving in one process, without a process group
def test_dcp_metadata_still_names_each_file_with_offset_and_length(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    tensors = {"a": torch.zeros(100), "b": torch.ones(7)}
    dcp.save({"model": tensors}, storage_writer=dcp.FileSystemWriter(str(tmp_path)))
    extents = compat.dcp_extents(str(tmp_path))
    assert set(extents) == {p.name for p in tmp_path.glob("*.distcp")}, _changed(
        "torch", torch.__version__, "the files torch.distributed.checkpoint's metadata names"
    )
    assert all(0 < end <= (tmp_path / name).stat().st_size for name, end in extents.items())


def test_python_tells_the_exception_another_thread_is_handling() -> None:
    import threading

    handling, done = threading.Event(), threading.Event()
    seen: dict[str, BaseException | None] = {}

    def work() -> None:
        seen["idle"] = None
        try:
            raise KeyError("in flight")
        except KeyError:
            handling.set()
            done.wait(10)

    thread = threading.Thread(target=work)
    thread.start()
    handling.wait(10)
    error = compat.exception_in_flight(thread.ident)
    done.set()
    thread.join()
    message = "sys._current_exceptions() changed (was a dict of thread id to the exception it handles); see compat.py"
    assert isinstance(error, KeyError) and error.args == ("in flight",), message
    assert compat.exception_in_flight(threading.get_ident()) is None, message
