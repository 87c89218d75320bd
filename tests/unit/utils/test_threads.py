"""threads.py: every core under a launcher, each process its share, the user's choice first, GPUs untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.utils import threads
from finetune.utils.threads import Threads, ThreadsError, available_cores, decide, launcher_set_omp

ACCELERATE_CHILD = {"ACCELERATE_MIXED_PRECISION": "no", "OMP_NUM_THREADS": "1"}
TORCHRUN_CHILD = {"TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
ACCELERATE_CMD = ["python3", "/usr/bin/accelerate", "launch", "finetune/run.py", "--recipe", "r.json"]


def choose(env: dict, cores: int = 8, accelerator: bool = False, parent_env: dict | None = None,
           parent_cmdline: list[str] | None = None, torch_threads: int = 1) -> Threads:
    return decide(env, accelerator=accelerator, cores=cores, torch_threads=torch_threads,
                  parent_env={} if parent_env is None else parent_env, parent_cmdline=parent_cmdline or [])


def test_plain_python_uses_every_core() -> None:
    t = choose({}, cores=8, torch_threads=4)
    assert (t.count, t.why, t.applies) == (8, "cores/processes", True)
    assert t.describe() == "8 CPU thread(s) (8 cores available / 1 process)"


def test_accelerate_launch_default_of_one_thread_is_replaced() -> None:
    t = choose(ACCELERATE_CHILD, cores=8, parent_cmdline=ACCELERATE_CMD)
    assert (t.count, t.why) == (8, "cores/processes")


def test_each_local_process_gets_its_share() -> None:
    assert choose(TORCHRUN_CHILD, cores=8).count == 4
    assert choose(TORCHRUN_CHILD, cores=2).count == 1
    # More processes than cores: one thread each, never zero.
    assert choose({**TORCHRUN_CHILD, "LOCAL_WORLD_SIZE": "4"}, cores=2).count == 1
    t = choose({**TORCHRUN_CHILD, "LOCAL_WORLD_SIZE": "3"}, cores=8)
    assert t.count * 3 <= 8 and t.describe() == "2 CPU thread(s) (8 cores available / 3 processes)"


def test_user_omp_num_threads_wins_over_the_count() -> None:
    # Plain python: any OMP_NUM_THREADS is the user's (no launcher put it there).
    t = choose({"OMP_NUM_THREADS": "3"}, cores=8, torch_threads=3)
    assert (t.count, t.why, t.applies) == (3, "user OMP_NUM_THREADS", False)
    # Under a launcher, the user's shell value is in the launcher's own environment.
    t = choose({**ACCELERATE_CHILD, "OMP_NUM_THREADS": "3"}, parent_env={"OMP_NUM_THREADS": "3"}, torch_threads=3)
    assert (t.why, t.applies) == ("user OMP_NUM_THREADS", False)
    # accelerate's own flag for it.
    cmd = ACCELERATE_CMD[:3] + ["--num_cpu_threads_per_process", "2"] + ACCELERATE_CMD[3:]
    assert choose({**ACCELERATE_CHILD, "OMP_NUM_THREADS": "2"}, parent_cmdline=cmd).why == "user OMP_NUM_THREADS"
    cmd = ACCELERATE_CMD[:3] + ["--num_cpu_threads_per_process=2"] + ACCELERATE_CMD[3:]
    assert choose({**ACCELERATE_CHILD, "OMP_NUM_THREADS": "2"}, parent_cmdline=cmd).why == "user OMP_NUM_THREADS"


def test_launcher_default_without_proc_is_recognised_by_its_value() -> None:
    assert launcher_set_omp(TORCHRUN_CHILD, None, [])
    assert not launcher_set_omp({**TORCHRUN_CHILD, "OMP_NUM_THREADS": "4"}, None, [])
    assert not launcher_set_omp({"OMP_NUM_THREADS": "1"}, {}, [])  # no launcher at all


def test_finetune_num_threads_wins_over_everything() -> None:
    for env in ({}, ACCELERATE_CHILD, {"OMP_NUM_THREADS": "6"}):
        t = choose({**env, "FINETUNE_NUM_THREADS": "3"}, cores=8)
        assert (t.count, t.why, t.applies) == (3, "user FINETUNE_NUM_THREADS", True)
    assert choose({"FINETUNE_NUM_THREADS": "2"}, accelerator=True).count == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_bad_finetune_num_threads_is_a_one_line_error(value: str) -> None:
    with pytest.raises(ThreadsError, match="FINETUNE_NUM_THREADS=.*positive whole number"):
        choose({"FINETUNE_NUM_THREADS": value})


def test_accelerator_present_changes_nothing() -> None:
    t = choose(ACCELERATE_CHILD, cores=8, accelerator=True, torch_threads=1)
    assert (t.count, t.why, t.applies) == (1, "accelerator present: unchanged", False)


def test_gpu_run_keeps_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA available, configure_threads neither sets nor changes torch's thread count."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.delenv("FINETUNE_NUM_THREADS", raising=False)
    threads._decision.cache_clear()
    try:
        before = torch.get_num_threads()
        record = threads.configure_threads()
        assert record.why == "accelerator present: unchanged" and record.count == before
        assert calls == [] and torch.get_num_threads() == before
    finally:
        threads._decision.cache_clear()


def test_configure_threads_applies_and_reapplies(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv("FINETUNE_NUM_THREADS", "1")
    threads._decision.cache_clear()
    try:
        assert threads.configure_threads().count == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(2)  # as a library might, between the two calls
        assert threads.configure_threads().count == 1 and torch.get_num_threads() == 1
    finally:
        threads._decision.cache_clear()
        torch.set_num_threads(before)


def test_available_cores_counts_physical_cores_in_the_affinity_mask() -> None:
    # Two cores with two hyper-threads each; this process may run on CPUs 0, 1 and 2.
    topology = {0: ("0", "0"), 1: ("0", "0"), 2: ("0", "1"), 3: ("0", "1")}
    assert available_cores([0, 1, 2], topology, None) == 2
    assert available_cores([0, 2], {}, None) == 2  # no topology: every CPU counts
    assert available_cores([0, 1, 2, 3], {}, 1.5) == 1  # the quota caps, whole cores
    assert available_cores([0], {}, 0.2) == 1
    assert available_cores([], {}, None) == 1


def test_cgroup_quota_reads_the_tightest_cpu_max(tmp_path: Path) -> None:
    assert threads.parse_cpu_max("max 100000\n") is None
    assert threads.parse_cpu_max("200000 100000\n") == 2.0
    assert threads.parse_cpu_max("garbage") is None
    root = tmp_path / "cgroup"
    (root / "a" / "b").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "a" / "cpu.max").write_text("300000 100000\n")
    (root / "a" / "b" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/a/b\n")
    assert threads.cgroup_quota(root, proc) == 3.0
    proc.write_text("4:cpu:/\n")  # cgroup v1 only: the root file, here unlimited
    assert threads.cgroup_quota(root, proc) is None
    assert threads.cgroup_quota(tmp_path / "none", tmp_path / "none") is None
