"""Tiny random classifiers built from a config and saved like Hub checkpoints, with their image processors."""

from __future__ import annotations

from pathlib import Path


def make_tiny_vit(path: Path, image_size: int = 32, num_labels: int = 3) -> Path:
    """A 2-layer, 32-wide ViT with its processor, saved at ``path``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    import torch

    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def make_tiny_resnet(path: Path, num_labels: int = 5) -> Path:
    """A 2-stage ResNet with a ConvNeXt-style processor (crop_pct), saved at ``path``."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=num_labels
    )
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)
    return path


def make_tiny_timm(path: Path, num_labels: int = 7) -> Path:
    """A tiny timm model (test_efficientnet) through TimmWrapper, saved at ``path``."""
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    reference = timm.create_model("test_efficientnet", pretrained=False)
    pretrained_cfg = {k: v for k, v in reference.pretrained_cfg.items() if k not in ("url", "hf_hub_id", "tag")}
    pretrained_cfg["input_size"] = (3, 32, 32)
    config = TimmWrapperConfig(
        architecture="test_efficientnet",
        pretrained_cfg=pretrained_cfg,
        num_labels=num_labels,
        num_features=reference.num_features,
    )
    torch.manual_seed(0)
    TimmWrapperForImageClassification(config).save_pretrained(path)
    return path


def doubled_head():
    """A classifier whose logits are 2 × its last Linear layer's output: cached features (the
    Linear's input) cannot reproduce them, so a cached-feature probe must refuse it."""
    from types import SimpleNamespace

    import torch

    class DoubledHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = torch.nn.Linear(3, 2)

        def forward(self, pixel_values):
            return SimpleNamespace(logits=2 * self.classifier(pixel_values.mean((2, 3))))

    return DoubledHead()


def save_tiny(kind: str, path: Path) -> Path:
    """Tiny random checkpoints of the other HF-native families, each with its processor."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if kind == "convnext":
        model = tf.ConvNextForImageClassification(tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3))
        processor = tf.ConvNextImageProcessor(size={"shortest_edge": 32})
    elif kind == "swin":
        model = tf.SwinForImageClassification(
            tf.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=3)
        )
        processor = tf.ViTImageProcessor(size={"height": 32, "width": 32})
    elif kind == "deit":
        model = tf.DeiTForImageClassificationWithTeacher(
            tf.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=3)
        )
        processor = tf.DeiTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    else:  # beit
        model = tf.BeitForImageClassification(
            tf.BeitConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=3, use_mean_pooling=True)
        )
        processor = tf.BeitImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_tiny_distilled_deit(path: Path, num_labels: int = 3) -> Path:
    """A tiny timm DeiT with a distillation token (through TimmWrapper): its logits are the mean
    of two Linear heads, so its last Linear layer alone is not the whole head."""
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    shape = {"img_size": 32, "patch_size": 8, "depth": 1, "num_heads": 2, "embed_dim": 32}
    reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, **shape)
    pretrained_cfg = {k: v for k, v in reference.pretrained_cfg.items() if k not in ("url", "hf_hub_id", "tag")}
    pretrained_cfg["input_size"] = (3, 32, 32)
    config = TimmWrapperConfig(
        architecture="deit_tiny_distilled_patch16_224", pretrained_cfg=pretrained_cfg, num_labels=num_labels,
        num_features=reference.num_features, model_args=shape,
    )
    torch.manual_seed(0)
    TimmWrapperForImageClassification(config).save_pretrained(path)
    return path
