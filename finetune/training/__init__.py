"""One training run: the data prepared, the Trainer and its arguments, the output folder and its rules, interruptions, losses and regularisers, distillation and LP-FT."""
