"""CPU threads for torch: the cores this process may use, shared among the training processes on the machine."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from finetune.utils.devices import has_accelerator

#: The user's explicit thread count for each training process; it always wins.
ENV_THREADS = "FINETUNE_NUM_THREADS"

# Variables that torchrun (and accelerate's multi-process path, which runs torchrun) or
# accelerate's single-process launcher put into the environment of the process they start.
_LAUNCHER_MARKERS = ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "ACCELERATE_MIXED_PRECISION")
# Processes on this machine: torchrun's, then the MPI launchers' that accelerate also reads.
_LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


class ThreadsError(ValueError):
    """FINETUNE_NUM_THREADS holds something other than a positive whole number."""


@dataclass(frozen=True)
class Threads:
    """The thread decision, stated in the training log."""

    #: torch's intra-op threads once the decision is applied.
    count: int
    #: "user FINETUNE_NUM_THREADS", "user OMP_NUM_THREADS", "cores/processes" or
    #: "accelerator present: unchanged".
    why: str
    #: For "cores/processes": the cores available and the processes sharing them.
    cores: int = 0
    processes: int = 1
    #: Whether finetune sets torch's thread count (False: torch keeps what it chose).
    applies: bool = False

    def describe(self) -> str:
        if self.why == "cores/processes":
            plural = "process" if self.processes == 1 else "processes"
            detail = f"{self.cores} cores available / {self.processes} {plural}"
        else:
            detail = self.why
        return f"{self.count} CPU thread(s) ({detail})"


# ------------------------------------------------------------------ what the machine has


def available_cores(affinity: Iterable[int], topology: Mapping[int, tuple[str, str]], quota: float | None) -> int:
    """Physical cores among the CPUs this process may run on, capped by a cgroup CPU quota.

    ``topology`` maps a CPU to its (package, core) ids; hyper-threads of one core count once,
    as torch's own default counts physical cores. CPUs missing from it count one each.
    """
    cpus = list(affinity)
    cores = len({topology.get(cpu, ("cpu", str(cpu))) for cpu in cpus}) or 1
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return cores


def _affinity() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _topology(cpus: Iterable[int], root: Path = Path("/sys/devices/system/cpu")) -> dict[int, tuple[str, str]]:
    out = {}
    for cpu in cpus:
        where = root / f"cpu{cpu}" / "topology"
        try:
            out[cpu] = ((where / "physical_package_id").read_text().strip(), (where / "core_id").read_text().strip())
        except OSError:
            continue
    return out


def parse_cpu_max(text: str) -> float | None:
    """Cores allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD": no limit)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest cgroup v2 CPU quota on this process's cgroup and its parents, in cores."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    own = next((line[3:].strip() for line in lines if line.startswith("0::")), "")
    parts = [p for p in own.split("/") if p and p != ".."]
    quotas = []
    for depth in range(len(parts), -1, -1):  # own cgroup first, the root last
        try:
            quota = parse_cpu_max(root.joinpath(*parts[:depth], "cpu.max").read_text())
        except OSError:
            continue
        if quota is not None:
            quotas.append(quota)
    return min(quotas) if quotas else None


# --------------------------------------------------------------------------- deciding


def launcher_set_omp(env: Mapping[str, str], parent_env: Mapping[str, str] | None, parent_cmdline: list[str]) -> bool:
    """Whether OMP_NUM_THREADS in ``env`` is a launcher's default rather than the user's.

    accelerate launch (without --cpu, or with it) and torchrun (with more than one process
    per machine) set OMP_NUM_THREADS in the environment of the processes they start, and
    they are those processes' parent. The parent's own environment (the one it was started
    with, as /proc shows it) is then the user's: if it has no OMP_NUM_THREADS and the user
    did not pass accelerate's --num_cpu_threads_per_process, the value is the launcher's.
    Without a launcher (plain python, `finetune train`) the value is the user's.
    """
    if "OMP_NUM_THREADS" not in env or not any(k in env for k in _LAUNCHER_MARKERS):
        return False
    if any(arg.startswith("--num_cpu_threads_per_process") for arg in parent_cmdline):
        return False
    if parent_env is None:  # /proc unreadable: both launchers' default is 1
        return env["OMP_NUM_THREADS"].strip() == "1"
    return "OMP_NUM_THREADS" not in parent_env


def local_processes(env: Mapping[str, str]) -> int:
    for name in _LOCAL_SIZE_VARS:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def decide(
    env: Mapping[str, str],
    *,
    accelerator: bool,
    cores: int,
    torch_threads: int,
    parent_env: Mapping[str, str] | None,
    parent_cmdline: list[str],
) -> Threads:
    """The thread count from the inputs alone (no side effects), in order of precedence."""
    raw = env.get(ENV_THREADS)
    if raw is not None:
        if not (raw.strip().isdigit() and int(raw) > 0):
            raise ThreadsError(f"{ENV_THREADS}={raw!r}: use a positive whole number of CPU threads, or unset it")
        return Threads(int(raw), f"user {ENV_THREADS}", applies=True)
    if accelerator:
        # The GPU does the work; torch's CPU threads stay exactly as without finetune.
        return Threads(torch_threads, "accelerator present: unchanged")
    if "OMP_NUM_THREADS" in env and not launcher_set_omp(env, parent_env, parent_cmdline):
        return Threads(torch_threads, "user OMP_NUM_THREADS")
    processes = local_processes(env)
    count = max(1, cores // processes)  # together never more threads than cores
    return Threads(count, "cores/processes", cores=cores, processes=processes, applies=True)


# ----------------------------------------------------------------------------- applying


def _parent() -> tuple[dict[str, str] | None, list[str]]:
    """The parent process's starting environment and command line, from /proc."""
    proc = Path("/proc") / str(os.getppid())
    try:
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        cmdline = []
    try:
        raw = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None, cmdline
    return dict(item.split("=", 1) for item in raw if "=" in item), cmdline


@functools.cache
def _decision() -> Threads:
    import torch

    if ENV_THREADS in os.environ:  # the explicit count needs nothing else looked up
        parent_env, cmdline, accelerator, cores = None, [], False, 1
    else:
        parent_env, cmdline = _parent()
        accelerator = has_accelerator()
        cpus = _affinity()
        cores = available_cores(cpus, _topology(cpus), cgroup_quota())
    return decide(
        os.environ,
        accelerator=accelerator,
        cores=cores,
        torch_threads=torch.get_num_threads(),
        parent_env=parent_env,
        parent_cmdline=cmdline,
    )


def configure_threads() -> Threads:
    """Decide once per process, and (re)apply: later calls undo a library's change in between.

    Raises ThreadsError for a malformed FINETUNE_NUM_THREADS.
    """
    threads = _decision()
    if threads.applies:
        import torch

        if torch.get_num_threads() != threads.count:
            torch.set_num_threads(threads.count)
    return threads
