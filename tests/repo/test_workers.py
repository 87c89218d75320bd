"""The suite's own pytest-xdist workers are each pinned to their own CPUs (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.workers import pin_xdist_worker


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
@pytest.mark.parametrize(
    "worker, workers, cpus, mine",
    [("gw0", "2", [0, 1], [0]), ("gw1", "2", [0, 1, 2, 3], [1, 3]), ("gw2", "3", [0, 1], [0]), ("gw0", "1", [0, 1], [0, 1])],
)
def test_each_xdist_worker_is_pinned_to_its_own_cpus(monkeypatch, worker, workers, cpus, mine) -> None:
    """Under ``pytest -n N`` the workers share the CPUs out (round robin when there are more
    workers than CPUs), so the jobs one worker starts never size their threads to the
    whole machine while another worker's jobs run."""
    pinned = []
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", workers)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, chosen: pinned.append(sorted(chosen)))
    pin_xdist_worker()
    assert pinned == [mine]
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    pin_xdist_worker()  # not under xdist: nothing is pinned
    assert pinned == [mine]
