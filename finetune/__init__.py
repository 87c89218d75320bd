"""finetune: recipe-driven fine-tuning of pretrained image classifiers.

The path from command to result is one module per step:
recipe.py → data/ → model.py → train.py (Trainer) → metrics.py → card.py → hub.py,
driven by run.py.
"""

__version__ = "0.1.0"
