"""Models: a pretrained classifier loaded with a new head for the user's classes, the built-in models, and how the backbone trains (LoRA adapters, layer-wise learning-rate decay)."""
