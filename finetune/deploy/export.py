"""`finetune export`: a finished run's model to ONNX (optionally int8), checked against PyTorch on real images, with a report and a card.

``finetune export OUTPUT_DIR [--quantize int8] [--opset N] [--out DIR]`` writes, into
``OUTPUT_DIR/onnx`` by default (the run's own files are only read):

- ``model.onnx`` with a dynamic batch dimension (input ``pixel_values``, output
  ``logits``), from ``torch.onnx.export``: the dynamo exporter first, the TorchScript one
  when dynamo cannot trace the model (the report says which one ran and why);
- ``config.json`` (class names; a timm model's preprocessing) and
  ``preprocessor_config.json`` when the model has one, so the folder is self-contained;
- with ``--quantize int8``: ``model.int8.onnx`` (:mod:`finetune.deploy.quantize`), and the
  accuracy on the run's eval split, the file sizes and CPU latency at batch 1 and 32 of
  PyTorch, ONNX fp32 and ONNX int8;
- ``export_report.json`` and ``README.md`` (the card of the exported folder).

Every export is checked: ONNX Runtime against PyTorch on the same batch of real eval
images; it fails when the probabilities differ by more than :data:`FP32_BOUND`.
The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from finetune.deploy import onnx_classifier as onnx_model
from finetune.deploy.export_images import ExportError, Images
from finetune.utils import extras
from finetune.utils.errors import first_line
from finetune.utils.files import current_umask, write_json

#: Largest |Δ| allowed between PyTorch's and ONNX Runtime's softmax probabilities (fp32).
FP32_BOUND = 1e-3
DEFAULT_OPSET = 18
#: Training images (a seeded sample) that int8 activation ranges are calibrated on.
CALIBRATION_SIZE = 256
#: Above this many bytes of weights, they go into a side file (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_500_000_000


# --------------------------------------------------------------------- checks first


def check_extra() -> None:
    if absent := extras.problem("export", ("onnx", "onnxruntime")):
        raise ExportError(absent)


def check_source(source: Path) -> None:
    if not source.is_dir():
        raise ExportError(f"OUTPUT_DIR: no such folder '{source}'; pass the output_dir of a finished `finetune train` run")
    if onnx_model.is_export(source):
        raise ExportError(f"OUTPUT_DIR: '{source}' is already an exported folder; pass the run's output_dir instead")
    missing = [name for name in ("recipe.json", "config.json") if not (source / name).is_file()]
    if missing:
        raise ExportError(
            f"OUTPUT_DIR: '{source}' is not a finetune output folder ({' and '.join(missing)} missing); "
            "pass the output_dir of a finished `finetune train` run"
        )
    if not any(source.glob("model*.safetensors")) and not (source / "pytorch_model.bin").is_file():
        raise ExportError(f"OUTPUT_DIR: '{source}' holds no trained weights (model.safetensors); let the run finish first")


def check_target(source: Path, target: Path, overwrite: bool) -> None:
    if target.resolve() == source.resolve():
        raise ExportError(f"--out: '{target}' is the run's own folder, whose files must stay as they are; name another folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        earlier = (target / onnx_model.REPORT_FILE).is_file() or onnx_model.is_export(target)
        if not (earlier and overwrite):
            fix = "pass --overwrite to replace it, or name another --out" if earlier else "name an empty or new --out folder"
            raise ExportError(f"--out: '{target}' exists and is not empty; {fix}")


# ----------------------------------------------------------------------------- export


def _to_onnx(model, example, path: Path, opset: int) -> tuple[str, str | None]:
    """Export ``model`` (logits from pixel_values) with a dynamic batch; returns the exporter
    used and why the first one was not."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    wrapped = Logits(model).eval()
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
    common = dict(input_names=["pixel_values"], output_names=["logits"], opset_version=opset, external_data=big, verbose=False)
    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(wrapped, (example,), str(path), dynamo=True, dynamic_shapes={"pixel_values": {0: batch}}, **common)
            return "dynamo", None
        except Exception as err:  # noqa: BLE001 - any tracing failure: try the other exporter
            problems.append(f"dynamo exporter: {type(err).__name__}: {first_line(err)}")
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
        try:
            torch.onnx.export(
                wrapped, (example,), str(path), dynamo=False,
                dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, **common,
            )
            return "torchscript", problems[0]
        except Exception as err:  # noqa: BLE001
            problems.append(f"TorchScript exporter: {type(err).__name__}: {first_line(err)}")
    raise ExportError(
        f"cannot export the {type(model).__name__} model to ONNX ({'; '.join(problems)}); "
        "try another --opset, or keep serving the PyTorch folder with `finetune predict`"
    )


def _torch_logits(model, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(pixel_values=torch.from_numpy(pixels)).logits.float().numpy()


def _hf_pixels(processor, images: list) -> np.ndarray:
    return processor(images=images, return_tensors="pt")["pixel_values"].float().numpy()


def activation_name(classifier) -> str:
    """"sigmoid" for a multi-label model (one per class), else "softmax": the probabilities the
    checks compare, and the name their report keys carry."""
    return "sigmoid" if classifier.multi_label else "softmax"


def decisions_agree(classifier, logits_a: np.ndarray, logits_b: np.ndarray, limits_b=None) -> np.ndarray:
    """Per image, whether two sets of logits give the same answer: the same top class, or for
    a multi-label model the same set of labels at its thresholds (``limits_b``: other
    thresholds for ``logits_b``, as the int8 model's own)."""
    if classifier.multi_label:
        limits = np.asarray(classifier.thresholds)
        a = classifier.activation(logits_a) >= limits
        b = classifier.activation(logits_b) >= (limits if limits_b is None else np.asarray(limits_b))
        return (a == b).all(axis=-1)
    return logits_a.argmax(-1) == logits_b.argmax(-1)


def check_fp32(model, processor, classifier, images: list) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on the same pixels, and the ONNX runtime's own preprocessing
    against the model's processor. Probabilities are the model's own: the softmax, or each
    class's sigmoid (keys ``…_sigmoid_diff``, and the agreement of the label sets at the
    saved thresholds) for a multi-label model."""
    act, name = classifier.activation, activation_name(classifier)
    pixels = _hf_pixels(processor, images)
    reference = _torch_logits(model, pixels)
    got = classifier.logits(pixels)
    one = classifier.logits(pixels[:1])  # the batch dimension is dynamic: batch 1 as well
    prob_diff = float(np.abs(act(got) - act(reference)).max())
    own = classifier.preprocessor(images)
    own_logits = classifier.logits(own)
    agreement = "end_to_end_label_set_agreement" if classifier.multi_label else "end_to_end_top1_agreement"
    return {
        "images": len(images),
        "activation": name,
        f"max_abs_{name}_diff": prob_diff,
        "bound": FP32_BOUND,
        "max_abs_logit_diff": float(np.abs(got - reference).max()),
        "batch_1_max_abs_logit_diff": float(np.abs(one - reference[:1]).max()),
        "preprocessing": classifier.preprocessor.source,
        "preprocessing_max_abs_diff": float(np.abs(own - pixels).max()) if own.shape == pixels.shape else None,
        f"end_to_end_max_abs_{name}_diff": float(np.abs(act(own_logits) - act(reference)).max()),
        agreement: float(decisions_agree(classifier, own_logits, reference).mean()),
    }


def export(
    output_dir: str | Path,
    out: str | Path | None = None,
    *,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    calibration_data: str | None = None,
    calibration_size: int = CALIBRATION_SIZE,
    max_eval_images: int | None = None,
    overwrite: bool = False,
    command: str = "",
) -> tuple[dict[str, Any], Path]:
    """Export the run in ``output_dir``; returns the report and the export folder. Under the
    run's lock, shared: refused while a run holds it (:mod:`finetune.training.readers`)."""
    from finetune.training.readers import reading

    with reading(output_dir, ExportError):
        return _export(
            Path(output_dir), out, quantize=quantize, opset=opset, calibration_data=calibration_data,
            calibration_size=calibration_size, max_eval_images=max_eval_images, overwrite=overwrite, command=command,
        )


def _export(
    source: Path, out: str | Path | None, *, quantize: str | None, opset: int, calibration_data: str | None,
    calibration_size: int, max_eval_images: int | None, overwrite: bool, command: str,
) -> tuple[dict[str, Any], Path]:
    target = Path(out) if out else source / "onnx"
    check_source(source)
    check_target(source, target, overwrite)
    check_extra()
    images = Images(source, calibration_data, max_eval_images)  # before any export work: no images, no export

    from finetune.deploy.saved_run import load_saved
    from finetune.utils.threads import configure_threads

    threads = configure_threads().count
    saved = load_saved(source)
    model = saved.model.float().to("cpu").eval()
    if images.labelled and images.class_names != saved.class_names:
        raise ExportError(
            f"the run's data set has classes {images.class_names[:5]}… but the model {saved.class_names[:5]}…; "
            "export the run whose recipe.json names this model's data"
        )
    check_images = images.check_batch()
    if not check_images:
        raise ExportError("none of the check images could be read; make the run's data set (or --calibration-data) readable")
    if (source / "recipe.json").is_file():
        from finetune.training import run_files

        # Into the run's manifest before it is made (the folder it is first made in, under a
        # temporary name, is recognised as finetune's by that name).
        run_files.record_made(source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        for name in ("config.json", "preprocessor_config.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, work / name)
        example = _hf_pixels(saved.processor, check_images[:2] * (2 if len(check_images) == 1 else 1))
        import torch

        from finetune.deploy import quantize as q

        exporter, fallback = _to_onnx(model, torch.from_numpy(example), work / onnx_model.MODEL_FILE, opset)
        fp32 = onnx_model.load_export(work, threads=threads)
        check = check_fp32(model, saved.processor, fp32, check_images)
        diff = check[f"max_abs_{check['activation']}_diff"]
        if not diff <= FP32_BOUND:
            raise ExportError(
                f"the ONNX model's probabilities differ from PyTorch's by {diff:.2e} on "
                f"{check['images']} eval images (bound {FP32_BOUND:g}); nothing was written: try another --opset"
            )
        result: dict[str, Any] = {
            "source": str(source),
            "command": command,
            "format": "onnx",
            "opset": opset,
            "exporter": f"torch.onnx.export ({exporter})",
            "exporter_fallback_reason": fallback,
            "model_type": saved.model.config.model_type,
            "classes": saved.class_names,
            # A multi-label model's config.json (copied above) keeps its problem_type and its
            # per-class thresholds, which the ONNX runner applies.
            "multi_label": fp32.multi_label,
            # The views the run's final scores averaged over; the ONNX model scores one.
            "run_tta": saved.tta,
            "check": check,
            "files": {onnx_model.MODEL_FILE: _size(work, onnx_model.MODEL_FILE)},
            "pytorch_weights_bytes": sum(p.stat().st_size for p in source.glob("model*.safetensors")),
        }
        if quantize:
            result.update(_int8(model, saved.processor, fp32, work, images, calibration_size, threads, q, check_images))
        write_json(work / onnx_model.REPORT_FILE, result)
        from finetune.deploy.export_card import write_card

        write_card(work / "README.md", result)
        # mkdtemp makes the folder private (0700); an export is shared like any new folder.
        os.chmod(work, 0o777 & ~current_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result, target


def _size(folder: Path, name: str) -> int:
    """Bytes of a model file and its external-data side file, if any."""
    return sum(p.stat().st_size for p in folder.glob(name + "*") if p.is_file())


def _int8(
    model, processor, fp32, work: Path, images: Images, calibration_size: int, threads: int, q, check_images: list
) -> dict[str, Any]:
    """Quantize, then compare accuracy (multi-label: mAP), sizes and latency of PyTorch, ONNX
    fp32 and ONNX int8."""
    import torch

    mode, why = q.choose_mode(work / onnx_model.MODEL_FILE)
    calibration = None
    if mode == "static":
        sample = images.calibration(calibration_size)
        if not sample:
            raise ExportError("none of the calibration images could be read; pass --calibration-data FOLDER with readable images")
        calibration = fp32.preprocessor(sample)
    input_name = fp32.session.get_inputs()[0].name
    info = q.quantize_int8(work / onnx_model.MODEL_FILE, work / onnx_model.INT8_FILE, mode, calibration, input_name)
    info.why = why
    int8 = onnx_model.load_export(work, int8=True, threads=threads)
    sizes = {name: _size(work, name) for name in (onnx_model.MODEL_FILE, onnx_model.INT8_FILE)}
    result: dict[str, Any] = {"quantization": info.to_dict(), "files": sizes}
    if fp32.multi_label:
        result["int8_thresholds"] = tune_int8_thresholds(work, int8, images)
    result["size_ratio_int8_to_fp32"] = round(sizes[onnx_model.INT8_FILE] / sizes[onnx_model.MODEL_FILE], 4)

    result.update(compare_int8(model, processor, fp32, int8, images, check_images))

    # Latency: the same inputs and thread count for the three; medians of repeated runs.
    sample = fp32.preprocessor(images.check_batch()[:1])
    latency: dict[str, Any] = {"threads": threads, "device": "CPU"}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch_size, timing in q.TIMINGS.items():
            pixels = np.ascontiguousarray(np.repeat(sample, batch_size, axis=0))
            tensor = torch.from_numpy(pixels)

            def run_torch():
                with torch.inference_mode():
                    model(pixel_values=tensor)

            latency[f"batch_{batch_size}"] = {
                "pytorch_ms": q.median_ms(run_torch, timing),
                "onnx_fp32_ms": q.median_ms(lambda: fp32.logits(pixels), timing),
                "onnx_int8_ms": q.median_ms(lambda: int8.logits(pixels), timing),
                "warmup": timing.warmup,
                "repeats": timing.repeats,
            }
    finally:
        torch.set_num_threads(previous)
    result["latency_ms"] = latency
    one = latency["batch_1"]
    result["latency_ratio_int8_to_fp32_batch_1"] = round(one["onnx_int8_ms"] / one["onnx_fp32_ms"], 4)
    return result


def _label_rows(labels: np.ndarray, classes: int) -> np.ndarray:
    """Multi-hot rows for a multi-label model's scores: a data set of one class per image
    (class indices, N) is scored as the one-hot rows it is; multi-hot rows stay as they are."""
    return labels if labels.ndim == 2 else np.eye(classes, dtype=np.float32)[labels]


def _f1_at_thresholds(y: np.ndarray, p32: np.ndarray, p8: np.ndarray, limits32, limits8) -> dict[str, float]:
    """Micro F1 of the label sets on the eval split: fp32 at its thresholds, int8 at fp32's,
    and int8 at its own (what the int8 runner applies)."""
    from sklearn.metrics import f1_score

    def f1(probs, limits) -> float:
        return float(f1_score(y > 0.5, probs >= np.asarray(limits), average="micro", zero_division=0))

    return {"onnx_fp32": f1(p32, limits32), "onnx_int8_at_fp32_thresholds": f1(p8, limits32),
            "onnx_int8": f1(p8, limits8)}


def tune_int8_thresholds(work: Path, int8, images: Images) -> dict[str, Any]:
    """The int8 model's own per-class thresholds, tuned as training tuned fp32's (each
    class's F1-maximising cut, :func:`finetune.evaluation.thresholds.tune`) on its
    probabilities for the run's validation piece, saved in config.json under
    ``label_thresholds_int8``, which the int8 runner reads, and set on ``int8``. Quantization moves every
    probability a little; an image has several labels near their thresholds, so fp32's
    thresholds flip labels that int8's own do not. Kept at fp32's when the run had no
    validation piece (fp32's are then the default too) or its data set cannot be loaded."""
    from finetune.evaluation import thresholds as fit

    if images.data_problem is not None:
        why = f"the run's data set cannot be loaded ({images.data_problem})"
        return {"tuned": False, "why": f"{why}: int8 uses fp32's thresholds"}
    if images.validation_rows is None or len(images.validation_rows) == 0:
        return {"tuned": False, "why": "the run has no validation piece: int8 uses fp32's thresholds"}
    probs, truth = [], []
    for batch, labels in images.validation_batches():
        probs.append(int8.probabilities(int8.preprocessor(batch)))
        truth.append(_label_rows(labels, len(int8.class_names)))
    if not probs:
        return {"tuned": False, "why": "none of the validation piece's images could be read: int8 uses fp32's thresholds"}
    tuned = fit.tune(np.concatenate(probs), np.concatenate(truth))
    config = json.loads((work / "config.json").read_text())
    config[onnx_model.INT8_THRESHOLDS_KEY] = {
        name: float(value) for name, value, ok in zip(int8.class_names, tuned.values, tuned.tuned) if ok
    }
    write_json(work / "config.json", config)
    int8.thresholds = onnx_model.thresholds(config, int8.class_names, int8=True)
    return {"tuned": True, "on": "the run's validation piece", "images": tuned.num_images,
            "classes_tuned": int(tuned.tuned.sum()), "key": onnx_model.INT8_THRESHOLDS_KEY}


def compare_int8(model, processor, fp32, int8, images: Images, check_images: list) -> dict[str, Any]:
    """The int8 model against fp32 (and PyTorch): its score on the run's eval split when it
    can be loaded, under ``"metric"``'s name (accuracy, or for a multi-label model mAP:
    scikit-learn's average precision averaged over the classes with a positive image); and,
    on the same images (or, unlabelled, the check images), how far its probabilities move
    and how often its answer (top class, or set of labels at the thresholds) stays fp32's."""
    from finetune.probe.logistic import mean_average_precision

    multi, act, name = fp32.multi_label, fp32.activation, activation_name(fp32)
    metric = "map" if multi else "accuracy"
    agreement = "label_set_agreement" if multi else "top1_agreement"
    out: dict[str, Any] = {"metric": metric}
    if not images.labelled:
        own = fp32.preprocessor(check_images)
        p32, p8 = act(fp32.logits(own)), act(int8.logits(own))
        out[metric] = {"not_measured": f"the run's data set cannot be loaded ({images.data_problem})"}
        out["int8_vs_fp32"] = {
            "images": len(check_images), f"max_abs_{name}_diff": float(np.abs(p8 - p32).max()),
            f"mean_abs_{name}_diff": float(np.abs(p8 - p32).mean()),
            agreement: float(decisions_agree(fp32, fp32.logits(own), int8.logits(own), int8.thresholds).mean()),
        }
        return out
    scores: dict[str, list] = {"pytorch": [], "onnx_fp32": [], "onnx_int8": []}
    truth: list[np.ndarray] = []
    prob_diff, abs_sum, entries, agree = 0.0, 0.0, 0, 0
    for batch, labels in images.eval_batches():
        own = fp32.preprocessor(batch)
        logits32, logits8 = fp32.logits(own), int8.logits(own)
        for key, logits in (("pytorch", _torch_logits(model, _hf_pixels(processor, batch))), ("onnx_fp32", logits32),
                            ("onnx_int8", logits8)):
            scores[key].append(act(logits) if multi else logits.argmax(-1))
        truth.append(labels)
        delta = np.abs(act(logits8) - act(logits32))
        prob_diff, abs_sum, entries = max(prob_diff, float(delta.max())), abs_sum + float(delta.sum()), entries + delta.size
        agree += int(decisions_agree(fp32, logits32, logits8, int8.thresholds).sum())
    y = np.concatenate(truth)
    total = len(y)
    if multi:
        y = _label_rows(y, len(fp32.class_names))
        values = {k: mean_average_precision(y, np.concatenate(v)) for k, v in scores.items()}
        out["f1_micro"] = _f1_at_thresholds(y, np.concatenate(scores["onnx_fp32"]), np.concatenate(scores["onnx_int8"]),
                                            fp32.thresholds, int8.thresholds)
    else:
        values = {k: float((np.concatenate(v) == y).mean()) for k, v in scores.items()}
    out[metric] = {"split": images.eval_name, "images": total, **values}
    if values["onnx_int8"] is not None and values["onnx_fp32"] is not None:
        out[metric]["int8_minus_fp32"] = values["onnx_int8"] - values["onnx_fp32"]
    out["int8_vs_fp32"] = {
        f"max_abs_{name}_diff": prob_diff, f"mean_abs_{name}_diff": abs_sum / max(entries, 1),
        agreement: agree / total,
    }
    return out
