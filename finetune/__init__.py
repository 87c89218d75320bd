"""finetune: recipe-driven fine-tuning of pretrained image classifiers.

The path from command to result, one package per concern (docs/architecture.md has the
module map): the entry point, run → cli/ (a module per command) → recipe/ (read and checked
once) → training/ (data from data/, the model from models/ or the probe from probe/, the
Trainer) → evaluation/ (metrics, pictures) → publish/ (card, Hub). deploy/ uses a finished
run, sweeps/ runs many, utils/ serves them all. Imports only point down that list.
"""

__version__ = "0.1.0"
