"""finetune: recipe-driven fine-tuning of pretrained image classifiers.

The path from command to result, one module per step:
run.py → recipe.py → prepare.py (data/) → model.py → args.py + trainer.py (the Trainer) → train.py →
metrics.py, plots.py → card.py → hub.py. The README's module table lists every module.
"""

__version__ = "0.1.0"
