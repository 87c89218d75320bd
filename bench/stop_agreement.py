"""What one stop agreement costs: the MAX all-reduce of two numbers (the signal, the seconds per step) and its ``.item()``, on CPU gloo, the measurement behind ``interrupts.AGREE_SECONDS``.

    python bench/stop_agreement.py [--processes 2] [--calls 2000]

Starts ``--processes`` CPU processes with torchrun (gloo), as a multi-process CPU run has
them, and times ``--calls`` agreements in each, after 50 not counted; prints the median and
the 99th percentile per call, and what agreeing at every step would add to a step of 10 ms,
100 ms and 1 s. On GPUs (NCCL) the all-reduce itself is as quick, but its ``.item()`` makes
the host wait for every kernel queued so far, which is why the processes agree a few seconds
apart rather than at every step; this script measures the CPU side only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

WORKER = """
import os, statistics, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
calls = int(sys.argv[1])
times = []
for i in range(calls + 50):
    flag = torch.tensor([0.0, 0.01], dtype=torch.float64)
    start = time.perf_counter()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    int(flag[0].item()), float(flag[1].item())
    if i >= 50:
        times.append(time.perf_counter() - start)
times.sort()
if dist.get_rank() == 0:
    median, p99 = statistics.median(times), times[int(0.99 * len(times))]
    print(f"{dist.get_world_size()} processes, gloo on CPU: {median * 1e6:.0f} µs per agreement (median of {calls}), "
          f"99th percentile {p99 * 1e6:.0f} µs")
    for step in (0.01, 0.1, 1.0):
        print(f"  agreeing at every step of {step * 1000:.0f} ms would add {100 * median / step:.2f}%")
dist.destroy_process_group()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as folder:
        script = os.path.join(folder, "agree.py")
        with open(script, "w") as f:
            f.write(WORKER)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes),
                   "--master_port", "29561", script, str(args.calls)]
        subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
