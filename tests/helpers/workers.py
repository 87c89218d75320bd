"""pytest-xdist workers pinned to their own share of the CPUs (tests/conftest.py does it at import)."""

from __future__ import annotations

import os


def pin_xdist_worker() -> None:
    """Under pytest-xdist (``-n N``), give each worker its own share of this process's CPUs.

    Every training process sizes its torch threads by the cores it may use (threads.py), and
    the subprocesses a test starts inherit the worker's CPU affinity. Unpinned, two workers
    on 2 cores each ran 2-thread jobs: 4 spinning OpenMP threads on 2 cores, and the notebook
    test, which takes 3 minutes alone, had not finished after 15. Pinned, each worker and
    everything it starts sees its own cores, and the tests about threads read the affinity."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus, index, workers = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    mine = cpus[index::workers] if len(cpus) >= workers else [cpus[index % len(cpus)]]
    os.sched_setaffinity(0, mine)
