"""CPU threads under the real launchers: accelerate launch gives one process every core, torchrun two processes half each."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.utils import threads
from finetune.utils.threads import available_cores
from tests.helpers import ROOT

PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from finetune.utils.threads import configure_threads
import torch
record = configure_threads()
# One write per line: under PYTHONUNBUFFERED (as CI runs) print() writes each piece on its
# own, and the two torchrun ranks' pieces interleaved ("threadsthreads 1 ...").
sys.stdout.write(f"threads {{torch.get_num_threads()}} {{record.why}}\\n")
sys.stdout.flush()
"""


def _run(command: list[str], script: Path, **env: str) -> list[tuple[int, str]]:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FINETUNE_NUM_THREADS")}
    result = subprocess.run(command + [str(script)], env={**full, **env}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.findall(r"^threads (\d+) (.+)$", result.stdout, flags=re.M)
    assert found, result.stdout + result.stderr[-2000:]
    return [(int(n), why) for n, why in found]


@pytest.mark.e2e
def test_accelerate_launch_uses_every_core(tmp_path: Path) -> None:
    cores = available_cores(sorted(os.sched_getaffinity(0)), threads._topology(os.sched_getaffinity(0)),
                            threads.cgroup_quota())
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=str(ROOT)))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    assert _run(accelerate, script) == [(cores, "cores/processes")]
    assert _run(accelerate, script, FINETUNE_NUM_THREADS="1") == [(1, "user FINETUNE_NUM_THREADS")]
    # The user's OMP_NUM_THREADS, passed through the launcher, is kept.
    assert _run(accelerate, script, OMP_NUM_THREADS="1") == [(1, "user OMP_NUM_THREADS")]
    # torchrun with two processes: each gets half (torchrun alone would give each one thread).
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert _run(torchrun, script) == [(max(1, cores // 2), "cores/processes")] * 2
