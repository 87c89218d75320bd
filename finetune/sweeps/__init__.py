"""Many runs of one recipe: `finetune study` (a grid of settings over seeds, reported) and `finetune search` (an optuna search, then the best recipe trained)."""
