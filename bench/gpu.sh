#!/usr/bin/env bash
# One-shot GPU benchmark: ViT-B/16 training images/s on real CIFAR-10 through our
# pipeline, against the same model fed synthetic tensors already on the GPU, with model FLOP
# utilisation. Prepared to run once, unattended, if a GPU is lent:
#
#   bash bench/gpu.sh                    # full: 20,000 images x 2 epochs, batch 256 (a few minutes on an H100)
#   bash bench/gpu.sh --cpu-smoke        # the same code path, tiny, on CPU (no GPU needed)
#   bash bench/gpu.sh --images 5000      # any option of bench/gpu_throughput.py
#
# Results are printed and written to ${OUT:-/tmp}/gpu_bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv || true
fi
python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
exec python bench/gpu_throughput.py --json "${OUT:-/tmp}/gpu_bench.json" "$@"
