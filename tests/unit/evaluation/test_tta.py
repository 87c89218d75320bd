"""Test-time augmentation's averaging: probabilities (not logits) are averaged over the views, and
the result goes back into the pipeline as logits that map onto that average exactly."""

from __future__ import annotations

import math

import pytest
import torch

from finetune.evaluation.tta import SIGMOID, SOFTMAX, TestTimeAugmentation, average


def test_softmax_is_averaged_over_the_views_not_the_logits() -> None:
    views = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])]
    # softmax: (0.5, 0.5) and (0.75, 0.25); their mean is (0.625, 0.375).
    assert torch.allclose(average(views), torch.tensor([[0.625, 0.375]]))
    # The mean of the logits would have given softmax(ln3/2, 0) = (0.634, 0.366).
    assert not torch.allclose(average(views), torch.stack(views).mean(0).softmax(-1), atol=1e-3)
    # A V×N×C tensor, and a generator, average the same.
    assert torch.equal(average(torch.stack(views)), average(views))
    assert torch.equal(average(v for v in views), average(views))


def test_sigmoids_are_averaged_for_multi_label_outputs() -> None:
    views = [torch.tensor([[0.0, 10.0]]), torch.tensor([[math.log(3.0), -10.0]])]
    expected = torch.tensor([[(0.5 + 0.75) / 2, (torch.sigmoid(torch.tensor(10.0)) + torch.sigmoid(torch.tensor(-10.0))) / 2]])
    assert torch.allclose(average(views, SIGMOID), expected)


@pytest.mark.parametrize("activation", [SOFTMAX, SIGMOID], ids=lambda a: a.name)
def test_the_returned_logits_map_back_onto_the_average(activation) -> None:
    torch.manual_seed(0)
    views = [torch.randn(4, 6) * 3 for _ in range(5)]
    probs = average(views, activation)
    assert torch.allclose(activation.forward(activation.inverse(probs)), probs, atol=1e-6)


def test_a_class_no_view_believes_in_stays_finite() -> None:
    views = [torch.tensor([[0.0, -1e4]]), torch.tensor([[0.0, -1e4]])]
    logits = SOFTMAX.inverse(average(views))
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1]))
    assert torch.isfinite(loss) and loss > 50


def test_one_view_is_the_plain_softmax_and_the_views_run_one_batch_at_a_time() -> None:
    torch.manual_seed(1)
    weight = torch.randn(3, 3 * 8 * 8)
    seen: list[tuple[int, ...]] = []

    def model(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(pixels.shape))
        return pixels.flatten(1) @ weight.T

    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(TestTimeAugmentation("none").probabilities(model, x), model(x).softmax(-1))
    seen.clear()
    tta = TestTimeAugmentation("hflip")
    probs = tta.probabilities(model, x)
    assert seen == [(4, 3, 8, 8)] * 2
    assert torch.allclose(probs, (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2)
    assert torch.allclose(tta.logits(model, x).softmax(-1), probs, atol=1e-6)
    assert tta.describe().startswith("hflip (2 views per image") and "softmax averaged" in tta.describe()
    assert TestTimeAugmentation("none").describe() == "none (one view per image)"


def test_the_trainer_scores_the_averaged_prediction_and_its_cross_entropy(tiny_vit) -> None:
    """FinetuneTrainer's evaluation with views: the logits it hands the metrics are the log of
    the averaged softmax, and its loss is their cross-entropy; without, one view."""
    from transformers import AutoModelForImageClassification, TrainingArguments

    from finetune import data
    from finetune.training.trainer import FinetuneTrainer

    model = AutoModelForImageClassification.from_pretrained(tiny_vit).eval()
    transform = data.BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None)
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    trainer = FinetuneTrainer(model=model, args=args, batch_transform=transform)
    torch.manual_seed(3)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0])
    inputs = {"pixel_values": pixels, "labels": labels}
    normalised = transform(pixels, train=False).clone()
    with torch.no_grad():
        plain_loss, plain = trainer.compute_loss(model, inputs, return_outputs=True)
        assert torch.allclose(plain["logits"], model(pixel_values=normalised).logits)
        trainer.tta = TestTimeAugmentation("hflip")
        loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
        expected = (model(pixel_values=normalised).logits.softmax(-1) + model(pixel_values=normalised.flip(-1)).logits.softmax(-1)) / 2
    assert torch.allclose(outputs["logits"].softmax(-1), expected, atol=1e-6)
    assert loss == pytest.approx(float(torch.nn.functional.nll_loss(expected.log(), labels)), rel=1e-5)
    assert not torch.allclose(loss, plain_loss)


def test_each_view_alone_and_the_average_before_a_temperature() -> None:
    """each_view: one view per augmentation, in order; scores: with a temperature folded into the
    model, the average of the views' probabilities before it too (logits × T per view)."""
    torch.manual_seed(5)
    weight = torch.randn(3, 4 * 4 * 3)

    def model(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ weight.T

    x = torch.randn(5, 3, 4, 4)
    tta = TestTimeAugmentation("hflip")
    singles = list(tta.each_view())
    assert [len(one.views) for one in singles] == [1, 1] and len(tta.views) == 2
    assert torch.equal(singles[1].logits(model, x), model(x.flip(-1)))  # the model's own, for the fit
    logits, before = tta.scores(model, x)
    assert before is None and torch.allclose(logits, tta.logits(model, x))
    tta.temperature = 2.5
    logits, before = tta.scores(model, x)
    expected = (model(x).mul(2.5).softmax(-1) + model(x.flip(-1)).mul(2.5).softmax(-1)) / 2
    assert torch.allclose(before.softmax(-1), expected, atol=1e-6)
    assert torch.allclose(logits.softmax(-1), tta.probabilities(model, x), atol=1e-6)
