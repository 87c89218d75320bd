"""The recipe's schema: every section and key with its type and default (:mod:`finetune.recipe.builder`
turns a recipe's JSON into these dataclasses; :mod:`finetune.recipe.load` loads recipes;
:mod:`finetune.recipe.checks` checks keys against each other)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from finetune.recipe.metric_names import SINGLE_LABEL_METRICS
from finetune.utils.errors import UserError

Strategy = Literal["full", "linear_probe", "partial", "lora", "lp_ft"]

# TrainingArguments fields that the recipe sets elsewhere, or that we own because the pipeline
# depends on them (finetune.training.arguments.training_arguments says why each is fixed).
TRAINING_KEYS_ELSEWHERE = {
    "output_dir": "use the top-level 'output_dir' key",
    "hub_model_id": "use 'hub.repo_id'",
    "push_to_hub": "use 'hub.push'",
    "hub_token": "tokens come only from the environment (HF_TOKEN) or `hf auth login`",
    "push_to_hub_token": "tokens come only from the environment (HF_TOKEN) or `hf auth login`",
    "remove_unused_columns": "finetune prepares the pixel columns itself; the key has no effect here",
    "label_names": "finetune always uses the 'labels' column",
    "batch_eval_metrics": "finetune always accumulates metrics batch by batch to bound memory",
}

#: finetune's own keys in the ``training`` block, with their types;
#: :mod:`finetune.recipe.training_block` checks their values against the rest, and
#: :mod:`finetune.training.arguments` keeps them out of TrainingArguments.
FINETUNE_TRAINING_KEYS: dict[str, Any] = {
    "early_stopping_patience": int,  # evaluations without improvement before training stops
    "early_stopping_threshold": float,  # the least change in the metric that counts as one
    # Exponential moving average of the weights (finetune.training.ema): its decay per step
    # (null: off), and whether the decay ramps up from 0 over the first steps (timm's ModelEmaV3
    # warmup).
    "ema_decay": float | None,
    "ema_warmup": bool,
}


class RecipeError(UserError, ValueError):
    """Recipe problems: one line each, naming the file, the key and the fix."""


@dataclass
class Expected:
    """The result a recipe claims, stated up front (big_vision style) and tested by users."""

    metric: str = "accuracy"
    value: float = 0.0
    #: Free text: on what hardware / split / budget the value was obtained.
    note: str | None = None


#: Distillation defaults: half the loss from the teacher, softened at T = 4 (Hinton et al.
#: 2015 used T in 1-20; T = 4 is the common choice for image classifiers, e.g. Tian et
#: al. 2020's CIFAR-100 benchmark of distillation methods).
DISTILL_ALPHA = 0.5
DISTILL_TEMPERATURE = 4.0


@dataclass
class ModelConfig:
    name_or_path: str = ""
    revision: str | None = None
    strategy: Strategy = "full"
    #: With ``strategy: partial``: how many of the last backbone blocks are trained.
    unfreeze_last_n: int = 2
    #: Hub code only runs when asked for AND pinned to a commit (a moving branch could change it).
    trust_remote_code: bool = False
    #: With ``strategy: linear_probe``: run the frozen backbone once and train the head on
    #: its cached features (:mod:`finetune.probe.features`); augmentation does not apply then.
    #: false: the backbone runs every step, with augmentation.
    feature_cache: bool = True
    #: How a cached-feature linear probe fits its head: "trainer" (the recipe's optimizer,
    #: schedule and epochs) or "lbfgs": L2-regularised multinomial logistic regression by
    #: full-batch L-BFGS, the usual linear-probe protocol (CLIP, Radford et al. 2021, §3.2).
    probe_solver: Literal["trainer", "lbfgs"] = "trainer"
    #: What runs the frozen backbone's one feature pass (:mod:`finetune.probe.engine`): "torch",
    #: or "onnxruntime" (on a CPU; the ``export`` extra), or "auto": ONNX Runtime on a CPU in
    #: fp32 for a split of 1,000 images or more when it is installed, else PyTorch.
    feature_runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    #: With "lbfgs": the L2 strengths λ to try (loss = mean cross-entropy + λ/2·‖W‖²). With
    #: several, the best validation-piece accuracy wins (ties: the lower validation loss).
    probe_l2: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    #: With "lbfgs": the most L-BFGS iterations for each λ.
    probe_max_iter: int = 1000
    #: Channels-last memory format for the model and its input batches, which convolutions on
    #: GPUs and CPUs run faster in. null: on for convolutional models (more than one Conv2d:
    #: ResNet, ConvNeXt, EfficientNet; not ViT-like models) on CUDA or the CPU, without FSDP
    #: or DeepSpeed (``finetune.models.classifier.use_channels_last``).
    channels_last: bool | None = None
    #: The architecture only: its config is loaded and every weight initialised at random (the
    #: no-pretraining baseline that ``finetune study --scratch`` adds). Needs strategy "full".
    from_scratch: bool = False
    #: With ``strategy: lora`` (:mod:`finetune.models.lora`), each null for its default there:
    #: the adapters' rank (16), alpha (the rank: scale alpha/rank 1), dropout (0.1), the layers
    #: adapted (null: the attention query/key/value projections, or for CNNs every Linear and
    #: ungrouped convolution outside the head) and the variant ("lora", or "dora":
    #: weight-decomposed). Null by default so that a recipe setting one without
    #: ``strategy: lora`` is an error.
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_target_modules: list[str] | None = None
    lora_variant: Literal["lora", "dora"] | None = None
    #: Knowledge distillation (:mod:`finetune.training.distill`): a fine-tuned classifier with
    #: the same classes (a finetune output folder, a Hub id, ``builtin:``), run frozen on each
    #: training batch; the model trains on (1 - distill_alpha) × its usual loss +
    #: distill_alpha × T² × KL(teacher ‖ model) of the outputs softened by
    #: T = distill_temperature. null: none.
    teacher: str | None = None
    #: Weight of the distillation term, in [0, 1]; null: 0.5 (only with a teacher).
    distill_alpha: float | None = None
    #: Softening temperature T > 0; null: 4.0 (only with a teacher).
    distill_temperature: float | None = None

    @property
    def alpha(self) -> float:
        """``distill_alpha`` with its default."""
        return DISTILL_ALPHA if self.distill_alpha is None else self.distill_alpha

    @property
    def temperature(self) -> float:
        """``distill_temperature`` with its default."""
        return DISTILL_TEMPERATURE if self.distill_temperature is None else self.distill_temperature
    #: Layer-wise learning-rate decay, in (0, 1]: the head trains at the learning rate, each
    #: earlier block at this factor times the next one's (:mod:`finetune.models.layer_decay`).
    #: null: off.
    layer_decay: float | None = None
    #: Stochastic depth (Huang et al. 2016): the largest drop rate of the residual branches'
    #: DropPath layers, in [0, 1), set in a timm model's create kwargs or a transformers config
    #: that has the attribute (:mod:`finetune.models.drop_path`). null: the checkpoint's own.
    drop_path_rate: float | None = None
    #: With ``strategy: lp_ft`` and ``probe_solver: trainer``: the epochs of the linear-probe
    #: phase on cached features (its optimizer, learning rate and batch are ``training``'s).
    lp_epochs: float = 10.0

    @property
    def caches_features(self) -> bool:
        """A linear probe on cached features: the backbone runs once, without augmentation."""
        return self.strategy == "linear_probe" and self.feature_cache


@dataclass
class AugmentConfig:
    """Train-time augmentation, applied batch-wise with torchvision.transforms.v2."""

    #: RandomResizedCrop scale range; null turns the crop off.
    crop_scale: list[float] | None = field(default_factory=lambda: [0.5, 1.0])
    #: Horizontal flips: right for natural photos, wrong for digits or text.
    hflip: bool = True
    #: An automatic augmentation policy of torchvision, after crop and flip, on the uint8
    #: pixels: "trivial_augment" (TrivialAugmentWide, Müller & Hutter 2021), "rand_augment"
    #: (RandAugment, 2 ops at magnitude 9, Cubuk et al. 2020), "auto_augment" (AutoAugment's
    #: ImageNet policy, Cubuk et al. 2019) or "augmix" (Hendrycks et al. 2020). null: none.
    preset: Literal["trivial_augment", "rand_augment", "auto_augment", "augmix"] | None = None
    #: Probability of random erasing (Zhong et al. 2020) of a rectangle in each normalised
    #: image, as torchvision's and DeiT's recipes apply it last; 0: off.
    random_erasing: float = 0.0
    #: Mixup (Zhang et al. 2018) of whole training batches: the Beta(α, α) parameter of the
    #: mixing weight; 0: off. Targets become soft rows (``finetune.data.transforms.BatchMix``).
    mixup_alpha: float = 0.0
    #: CutMix (Yun et al. 2019): the Beta(α, α) parameter of the pasted box's area; 0: off.
    #: With both alphas set, each mixed batch gets one of the two, with equal chance.
    cutmix_alpha: float = 0.0
    #: The probability that a training batch is mixed at all (with mixup or CutMix on).
    mix_prob: float = 1.0

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (mixup or CutMix)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class EvalSetConfig:
    """An extra evaluation set (another domain), scored once at the end like the eval split."""

    dataset: str = ""
    config: str | None = None
    revision: str | None = None
    split: str = "test"
    image_column: str | None = None
    label_column: str | None = None


#: Names an eval set may have: they become metric prefixes (NAME_accuracy) and folder names
#: (eval-NAME/), so letters, digits, '-' and '_' only.
EVAL_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Prefixes the run's own files already use: eval_results.json's eval_*, train_results.json
#: and all_results.json.
RESERVED_EVAL_SET_NAMES = {"eval", "train", "all"}


#: The largest ``data.image_size``: several times the input of any common pretrained
#: classifier, and already an image whose decoded copy in the cache, and float copy in the
#: batch the model takes, weigh tens to hundreds of megabytes each; above it a run of any
#: size cannot fit in memory or on disk (the arithmetic: bench/README.md).
MAX_IMAGE_SIZE = 4096
#: The most ``data.preprocessing_num_workers``: each worker is a forked copy of the main
#: process with its share of the decode pass's memory budget (finetune.data.decode), and
#: beyond this many the pass waits on the disk, not the cores.
MAX_DECODE_WORKERS = 64


@dataclass
class DataConfig:
    dataset: str = ""
    config: str | None = None
    revision: str | None = None
    train_split: str = "train"
    eval_split: str | None = "test"
    validation_fraction: float = 0.1
    image_column: str | None = None
    label_column: str | None = None
    #: "single_label": one class per image; "multi_label": any number of classes per image,
    #: scored with a sigmoid per class and per-class decision thresholds
    #: (:mod:`finetune.data.multi_label`); "auto": multi-label when the label column holds
    #: lists (a ``Sequence`` feature, a JSON-lines list) or text in which some value holds
    #: ``label_separator``, else single-label. A folder of class sub-folders is single-label.
    task: Literal["auto", "single_label", "multi_label"] = "auto"
    #: What separates the classes of one image in a text label column ("cat;dog"); blanks
    #: around each class are dropped, as are empty items. The contract's
    #: ``finetune.data.multi_label.DEFAULT_SEPARATOR`` (a test holds the two equal).
    label_separator: str = ";"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    samples_per_class: int | None = None
    #: The model's input size in pixels (null: the model's own); at most :data:`MAX_IMAGE_SIZE`.
    image_size: int | None = None
    #: Stop before training when more than this share of the images cannot be decoded.
    max_bad_fraction: float = 0.01
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: Processes for the one-off decode/resize ``datasets.map`` pass (null: automatic); at
    #: most :data:`MAX_DECODE_WORKERS`.
    preprocessing_num_workers: int | None = None
    #: Stream the images (decoded, cropped and flipped in DataLoader workers every epoch,
    #: nothing written to disk) instead of decoding every split into a cache first
    #: (:mod:`finetune.training.streamed_data`). "auto": stream when the estimated decode
    #: cache would exceed a limit (docs/data.md) or the free disk, and the recipe needs nothing that only
    #: the cache gives (k-shot subsets, class weights, the balanced sampler, a cached-feature
    #: probe); the log says which path and why.
    streaming: bool | Literal["auto"] = "auto"
    #: Streaming from shards (parquet row groups, WebDataset tars, Hub shards): the images
    #: each worker shuffles together, read from its shards in turn, in a seeded block.
    shuffle_buffer: int = 1000
    #: Extra evaluation sets, NAME → where to find them; each is mapped onto the model's
    #: classes by name and scored once at the end (:mod:`finetune.evaluation.eval_sets`).
    eval_sets: dict[str, EvalSetConfig] = field(default_factory=dict)
    #: "balanced": the training loss weights each class by n_images / (n_classes × its
    #: count in the train piece), as scikit-learn's compute_class_weight("balanced"). null: 1.
    class_weights: Literal["balanced"] | None = None
    #: "balanced": each training draw picks a class with equal chance, then an image of it (with
    #: replacement; seeded per epoch, :mod:`finetune.training.balance`). null: the Trainer's
    #: shuffled epochs.
    sampler: Literal["balanced"] | None = None
    #: Two images are near-duplicates when the cosine similarity of their 16×16 thumbnails, or
    #: of their features from the pretrained backbone, reaches this (``finetune inspect``, and
    #: ``leaked_eval``). 0.95 separates copies from distinct images on CIFAR-10 with
    #: EfficientNet-Lite0 (the study in the inspect manual).
    duplicate_threshold: float = 0.95
    #: What training does with eval-split images that duplicate a training-split image (the
    #: same pixels, or near-duplicates by ``duplicate_threshold``): "report": they stay, and
    #: ``finetune inspect`` reports them; "drop": before training, one pass of the pretrained
    #: backbone finds them and they are removed from the eval split (data_report.json lists them).
    leaked_eval: Literal["report", "drop"] = "report"


@dataclass
class HubConfig:
    push: bool = False
    repo_id: str | None = None
    private: bool = True
    revision: str | None = None


#: Test-time augmentation: the views each image is scored on (:mod:`finetune.data.views`).
TTA = Literal["none", "hflip", "hflip+crops"]


@dataclass
class EvaluationConfig:
    """How the final scores are made and how far to trust them: the eval split's and the eval
    sets' after training (test-time views, bootstrap intervals, calibration, the abstention
    threshold of the card), and the default of ``finetune eval`` and ``finetune predict`` on the
    run's folder."""

    #: "hflip": each image and its mirror image; "hflip+crops": those and four corner crops
    #: (``finetune.data.views.CROP_FRACTION`` of each side, resized back to the input size),
    #: each mirrored too (10 views). The softmax is averaged over the views, and the intervals,
    #: the calibration error, the temperature fit and the abstention threshold all read that
    #: average. The per-epoch scores on the validation piece stay single-view.
    tta: TTA = "none"
    #: The level of the bootstrap confidence intervals of the eval metrics, in (0, 1).
    ci_level: float = 0.95
    #: Bootstrap resamples of the evaluated images behind each interval (at least 100).
    bootstrap_resamples: int = 1000
    #: The resampling's seed: the same predictions always give the same interval.
    bootstrap_seed: int = 0
    #: Temperature scaling, fitted on the validation piece (over the views of ``tta``) and
    #: folded into the saved head (:mod:`finetune.training.calibrate`). null: on when there is a
    #: validation piece and the head can be folded; true: on, refused before training where it
    #: cannot be; false: off.
    calibrate: bool | None = None
    #: The accuracy on the eval split that the card's abstention threshold keeps, in (0, 1].
    abstain_accuracy: float = 0.95


@dataclass
class StudyConfig:
    """What `finetune study` runs (:mod:`finetune.sweeps.study`): every combination of the
    grid's values, over seeds."""

    #: Dotted recipe key → the values to try, e.g. {"data.samples_per_class": [5, 20, 100]}.
    grid: dict[str, list[Any]] = field(default_factory=dict)
    #: How many seeds each cell runs with: seed i adds i to training.seed and to the k-shot
    #: draw's training.data_seed.
    seeds: int = 1
    #: Also run every cell's architecture from random initialisation (model.from_scratch).
    scratch: bool = False


#: Keys a study grid may not vary: the study sets them for every cell itself.
STUDY_OWN_KEYS = {
    "output_dir": "each cell runs in its own folder under the recipe's output_dir",
    "training.seed": "use 'study.seeds'",
    "training.data_seed": "use 'study.seeds'",
    "model.from_scratch": "use 'study.scratch'",
}


@dataclass
class Recipe:
    description: str = ""
    #: Free text, one line per item: why the recipe is as it is (``finetune new`` writes the
    #: reason for each of its choices here). Training reads nothing from it.
    notes: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output_dir: str = ""
    expected: Expected | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: list(SINGLE_LABEL_METRICS))
    hub: HubConfig = field(default_factory=HubConfig)
    #: Test-time views, intervals, calibration and abstention of the final evaluation.
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    #: Read by `finetune study` only; `finetune train` trains the recipe as it is.
    study: StudyConfig | None = None
    #: The hyper-parameter search space of ``finetune search``: dotted recipe key → a range or
    #: choices (:mod:`finetune.recipe.search_space`); ``finetune train`` refuses a recipe that
    #: has one.
    search: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The keys of the ``lora`` strategy.
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_variant")
