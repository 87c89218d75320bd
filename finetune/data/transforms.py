"""uint8 batches to normalised float batches on their device, augmented per image (and mixed per batch) in training."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from finetune.data.decode import output_size, processor_normalization
from finetune.data.resize import ProcessorResize
from finetune.recipe import AugmentConfig
from finetune.utils import compat


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Run the block with one intra-op thread on CPU (nothing changes on other devices)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resized_crop_uint8(image: torch.Tensor, top: int, left: int, height: int, width: int, size: list[int], antialias: bool) -> torch.Tensor:
    """``v2.functional.resized_crop`` for a uint8 image on CPU with bilinear interpolation,
    the same bytes: torchvision crops by slicing and resizes with ``interpolate`` on the
    uint8 pixels (torch's antialiased uint8 kernel). Called directly, for speed:
    torchvision's dispatch has a cost per image, and for a cropped channels-last
    image its 1-image batch hides the layout, so the kernel repacks its output
    (pytorch/pytorch#68430, worked around in torchvision only for uncropped images).
    """
    if (height, width) == tuple(size):
        return image[:, top : top + height, left : left + width]  # torchvision does not resize then
    # As one image of a batch, with a batch stride that keeps the layout visible.
    extent = max(n * stride for n, stride in zip(image.shape, image.stride()))
    batch = image.as_strided((1, *image.shape), (extent, *image.stride()))
    crop = batch[:, :, top : top + height, left : left + width]
    # Scaled up in both directions, the antialiased kernel is plain bilinear, and torch's
    # kernel without antialiasing gives the same bytes faster (a test checks every byte
    # against torchvision's v2 transforms).
    antialias = antialias and (height > size[0] or width > size[1])
    return torch.nn.functional.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=antialias)[0]


def presets() -> dict[str, Any]:
    from torchvision.transforms import v2

    return {
        "trivial_augment": v2.TrivialAugmentWide,
        "rand_augment": v2.RandAugment,
        "auto_augment": lambda **kw: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, **kw),
        "augmix": v2.AugMix,
    }


class BatchMix:
    """Mixup and CutMix of a normalised training batch with torchvision.transforms.v2 ``MixUp``
    and ``CutMix``: images are mixed with their neighbour in the (shuffled) batch, and the
    targets become soft rows, one-hot rows mixed in the same proportion (each sums to 1).
    Multi-label targets come as multi-hot float rows and are mixed as they are, with the same
    proportion λ as the images (a row then holds λ for a class of the first image alone,
    1 − λ for one of its neighbour's alone, 1 for one of both).

    With both on, each mixed batch gets one of the two with equal chance (``v2.RandomChoice``,
    timm's default switch probability 0.5); ``prob`` < 1 leaves a batch as it is with
    probability 1 − prob (``v2.RandomApply``; its targets are one-hot rows then). Given a
    ``seed``, the draws depend on it alone, as the per-image augmentation's do.
    """

    #: Added to the batch's seed: the mix draws from a stream of its own, not from the same
    #: numbers as the first image's crop.
    SALT = 0x6D6978

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0):
        from torchvision.transforms import v2

        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("BatchMix needs mixup_alpha or cutmix_alpha > 0")
        self.mixup_alpha, self.cutmix_alpha, self.prob = mixup_alpha, cutmix_alpha, prob
        # num_classes None: the targets come in one-hot already (see __call__).
        mixers = ([v2.MixUp(alpha=mixup_alpha)] if mixup_alpha > 0 else []) + (
            [v2.CutMix(alpha=cutmix_alpha)] if cutmix_alpha > 0 else []
        )
        mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
        self.transform = mix if prob >= 1 else v2.RandomApply([mix], p=prob)

    @classmethod
    def from_config(cls, augment: AugmentConfig | None) -> BatchMix | None:
        """The mix the recipe's ``data.augment`` asks for; None when it asks for none."""
        if augment is None or not augment.mixes:
            return None
        return cls(augment.mixup_alpha, augment.cutmix_alpha, augment.mix_prob)

    def __call__(
        self, pixels: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets of shape (N, num_classes)) for float ``pixels`` (N×3×H×W)
        and class indices ``labels`` (N,), or multi-hot float rows (N, num_classes) of a
        multi-label batch. The images keep their memory format."""
        if labels.is_floating_point():
            if labels.ndim != 2 or labels.shape[-1] != num_classes:
                raise ValueError(f"multi-hot targets must be N×{num_classes} rows, got {tuple(labels.shape)}")
            targets = labels.float()
        else:
            targets = torch.nn.functional.one_hot(labels.long(), num_classes).float()
        devices = [pixels.device] if pixels.device.type == "cuda" else []
        rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed((seed + self.SALT) % 2**63)
            mixed, targets = self.transform(pixels, targets)
        if pixels.is_contiguous(memory_format=torch.channels_last) and not pixels.is_contiguous():
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        return mixed, targets

    def describe(self) -> str:
        kinds = [f"{name} (α={alpha:g})" for name, alpha in (("mixup", self.mixup_alpha), ("CutMix", self.cutmix_alpha)) if alpha > 0]
        how = " or ".join(kinds) + (", one of the two per batch" if len(kinds) > 1 else "")
        return how + (f", on {self.prob:.0%} of the batches" if self.prob < 1 else "") + " (soft targets)"


class BatchTransform:
    """uint8 batches → normalised float batches on the batch's device; augments in training.

    Augmentation uses torchvision.transforms.v2 on each image of the batch (independent
    random crops and flips per image; a v2 transform given a whole batch would apply one
    random draw to all of it). Given a ``seed``, the draws depend on it alone (see
    ``FinetuneTrainer.compute_loss``), which makes interrupted runs resume exactly.

    ``size`` is the model's input (height, width). A batch of another size is a split that
    ``decode`` stored smaller than that; ``resize`` (the processor's, see
    :class:`ProcessorResize`) brings it to ``size`` first, on the batch's device, so the
    model gets what the processor would give it. A randomly cropped training batch needs no
    such step: each crop is taken from the stored image and resized straight to ``size``,
    one resize instead of two (the crop box is drawn on the stored image, as torchvision's
    ``RandomResizedCrop`` is usually applied to the original image). Without ``resize``,
    batches keep their size. :meth:`for_processor` builds one from the model's processor.
    """

    def __init__(
        self,
        mean: list[float],
        std: list[float],
        size: tuple[int, int],
        augment: AugmentConfig | None,
        channels_last: bool = False,
        resize: ProcessorResize | None = None,
    ):
        from torchvision.transforms import v2

        #: (height, width) of the batches the model takes.
        self.size = tuple(size)
        self.resize = resize
        #: Batches come out in channels-last memory (same shape and values) for a model
        #: converted to it (``finetune.models.classifier.use_channels_last``).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

        # (x / 255 - mean) / std as x * scale + shift: two passes over the batch, not three.
        std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).float()
        self.shift = (-torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1) / std_t).float()
        steps = []
        #: (height, width) of training crops; None: images keep their size.
        self.crop_size = tuple(size) if augment is not None and augment.crop_scale is not None else None
        if augment is not None and augment.crop_scale is not None:
            steps.append(v2.RandomResizedCrop(size, scale=tuple(augment.crop_scale), antialias=True))
        if augment is not None and augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment is not None and augment.preset is not None:
            # Bilinear, as torchvision's classification reference recipes build them.
            steps.append(presets()[augment.preset](interpolation=v2.InterpolationMode.BILINEAR))
        #: The steps on uint8 pixels (crop, flip, policy); None: none.
        self.augment = v2.Compose(steps) if steps else None
        #: Random erasing, on each normalised image (in place); None: off.
        self.erase = (
            v2.RandomErasing(p=augment.random_erasing, inplace=True)
            if augment is not None and augment.random_erasing > 0
            else None
        )
        #: Mixup / CutMix of training batches (applied by the Trainer, which holds the labels);
        #: None: off.
        self.mix = BatchMix.from_config(augment)
        #: For streamed batches (:meth:`for_stream`): the steps the loader workers ran.
        self.in_workers = None
        self._buffers: dict[bool, list[torch.Tensor]] = {}

    @classmethod
    def for_processor(cls, processor, augment: AugmentConfig | None, channels_last: bool = False) -> BatchTransform:
        """The transform for a model whose image processor is ``processor``: its normalisation,
        its output size, and its resize for splits stored below that size."""
        mean, std = processor_normalization(processor)
        return cls(mean, std, output_size(processor), augment, channels_last, resize=ProcessorResize(processor))

    @property
    def augments(self) -> bool:
        """Whether training images are augmented one by one (crop, flip, policy, erasing);
        mixing whole batches is :attr:`mix`."""
        return self.augment is not None or self.erase is not None

    def for_stream(self) -> BatchTransform:
        """A copy for batches that a streamed split's loader workers already cropped, flipped
        and passed through the policy (``finetune.data.streaming.images``): it normalises and,
        in training, erases and mixes, as here; :meth:`describe` says where each step runs."""
        streamed = copy.copy(self)
        streamed.augment, streamed.crop_size = None, None
        streamed.in_workers = self.augment
        return streamed

    def without_augmentation(self) -> BatchTransform:
        """A copy that only normalises (sharing this one's buffers)."""
        plain = copy.copy(self)
        plain.augment, plain.erase, plain.crop_size, plain.mix, plain.in_workers = None, None, None, None, None
        return plain

    def __call__(self, pixels: torch.Tensor, train: bool, seed: int | None = None) -> torch.Tensor:
        pixels = torch.as_tensor(pixels)
        if pixels.is_floating_point():  # already normalised (e.g. a caller's own tensors)
            return pixels
        augment = train and self.augments
        shape = tuple(pixels.shape)
        if augment and self.crop_size is not None and len(shape) == 4:
            shape = (*shape[:2], *self.crop_size)  # crops come out at the transform's size
        elif self.resize is not None and len(shape) == 4 and shape[2:] != self.size:
            pixels = self.resize(pixels)  # stored smaller than the model's input
            shape = tuple(pixels.shape)
        out = self._output(shape, pixels.device)
        scale, shift = self.scale.to(out.device), self.shift.to(out.device)
        if augment:
            # Given a seed, the draws depend on it alone (the Trainer derives it from the
            # training step), so a run resumed mid-epoch augments exactly like one that never
            # stopped; the global generator is left as it was.
            devices = [pixels.device] if pixels.device.type == "cuda" else []
            rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
            # Each image is a small tensor, and on CPU splitting each of its ops
            # across intra-op threads costs more than it saves (several times slower when
            # another job holds a core), so the per-image loop runs on one thread.
            scale_one, shift_one = scale[0], shift[0]
            with rng, _one_cpu_thread(pixels.device):
                if seed is not None:
                    torch.manual_seed(seed)
                for i, image in enumerate(pixels):
                    one = out[i]
                    one.copy_(self._augment_one(image))  # uint8 → float, into the batch
                    # Normalised while the image is still in the CPU's cache.
                    one.mul_(scale_one).add_(shift_one)
                    if self.erase is not None:
                        self.erase(one)
            return out
        if out.device.type == "cpu" and len(shape) == 4:
            # Image by image, each normalised while its floats are still in the CPU's cache:
            # faster than two more passes over a batch-sized buffer, which does not fit in
            # it, and on one thread, as the augmenting loop above.
            scale_one, shift_one = scale[0], shift[0]
            with _one_cpu_thread(out.device):
                for one, image in zip(out, pixels):
                    one.copy_(image).mul_(scale_one).add_(shift_one)
            return out
        out.copy_(pixels)
        # Normalised in place: no batch-sized temporaries.
        return out.mul_(scale).add_(shift)

    def _output(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 tensor of ``shape`` on ``device`` to write the batch into.

        On CPU a fresh batch-sized tensor is the single largest cost of normalisation: a
        float batch of 64 images at 224 px (38 MB) is above glibc's largest mmap threshold,
        so every batch is a new mapping and its page faults, which cost more than the
        arithmetic itself.
        So buffers are reused, but only when nothing else can still read them: callers get
        a view, and while any view (a Python reference, an autograd graph that saved the
        input, a numpy array) is alive, the storage is shared (``compat.storage_shared``).
        Two buffers per mode: a loop ``x = transform(batch)`` still holds the last batch
        while it asks for the next. GPUs have a caching allocator and need none of this.
        """
        if len(shape) != 4:
            return torch.empty(shape, dtype=torch.float32, device=device)
        if device.type != "cpu":
            return torch.empty(shape, dtype=torch.float32, device=device, memory_format=self.memory_format)
        # An inference-mode tensor may not be saved for backward: separate buffers per mode.
        pool = self._buffers.setdefault(torch.is_inference_mode_enabled(), [])
        free = [i for i, b in enumerate(pool) if not compat.storage_shared(b)]
        for i in free:
            if pool[i].shape[1:] == shape[1:] and pool[i].shape[0] >= shape[0]:
                return pool[i][: shape[0]]  # a short last batch takes the front of a full one
        buffer = torch.empty(shape, memory_format=self.memory_format)
        if len(pool) < 2:
            pool.append(buffer)
        elif free:  # a free buffer that does not fit (another size, or a short batch's): replace it
            pool[free[0]] = buffer
        return buffer[: shape[0]]

    def _augment_one(self, image: torch.Tensor) -> torch.Tensor:
        """``self.augment(image)``, with the same random draws in the same order, but calling
        the v2 functional ops directly: the Compose / pytree dispatch around them costs about
        a third of the per-image time at 224 px on CPU."""
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as F

        for step in self.augment.transforms if self.augment is not None else []:
            if isinstance(step, v2.RandomResizedCrop):
                p = step.make_params([image])
                top, left, height, width = p["top"], p["left"], p["height"], p["width"]
                # torchvision keeps the mode as an InterpolationMode or, in newer releases, its
                # string.
                bilinear = getattr(step.interpolation, "value", step.interpolation) == "bilinear"
                if image.device.type == "cpu" and image.dtype == torch.uint8 and bilinear:
                    image = resized_crop_uint8(image, top, left, height, width, list(step.size), step.antialias)
                else:
                    image = F.resized_crop(
                        image, top, left, height, width, step.size,
                        interpolation=step.interpolation, antialias=step.antialias,
                    )
            elif isinstance(step, v2.RandomHorizontalFlip):
                if torch.rand(1) < step.p:  # v2 applies the flip unless rand >= p
                    image = F.horizontal_flip(image)
            else:
                image = step(image)
        return image

    def describe(self) -> str:
        if not self.augments and self.in_workers is None:
            return self.mix.describe() if self.mix is not None else "none"
        from torchvision.transforms import v2

        parts = []
        steps = self.in_workers if self.in_workers is not None else self.augment
        for t in steps.transforms if steps is not None else []:
            if isinstance(t, v2.RandomResizedCrop):
                parts.append(f"random resized crop (scale {t.scale[0]:g}-{t.scale[1]:g})")
            elif isinstance(t, v2.RandomHorizontalFlip):
                parts.append("horizontal flip")
            else:
                parts.append(type(t).__name__)
        erase = f"random erasing (p={self.erase.p:g})" if self.erase is not None else None
        if self.in_workers is not None:
            text = ", ".join(parts) + " (per image, in the loader workers, cropped from each original image)"
            text += f"; then {erase} (per image, on the training device)" if erase else ""
        else:
            text = ", ".join(parts + ([erase] if erase else [])) + " (per image, batch-wise)"
        return text + (f"; then {self.mix.describe()}" if self.mix is not None else "")
