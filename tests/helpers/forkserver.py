"""The command line in a fresh process without paying for its imports each time: a fork server.

Each `finetune` command run as ``python finetune/run.py ...`` spends about 4.5 s on 2 cores
importing torch, transformers, datasets and peft before it reads its first argument; the
suite runs the command line about a hundred times, so that import was a third of its time.
The server is one process per test worker that imports those modules once, runs nothing,
starts no thread, and forks a child for each command (or ``python -c`` script). The child is a new process as
``subprocess.run`` would make it (its own pid, signal dispositions at their defaults,
environment, working folder, standard streams, exit handlers, exit code) whose modules
happen to be imported already.

What a fork cannot give is a module imported under another environment: torch, datasets
and transformers read some variables (caches, thread counts) at import. So a command whose
environment differs from the server's in a variable read at import (:data:`IMPORT_TIME`)
runs as a real subprocess (:meth:`ForkServer.serves`), as does one with a launcher.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

#: The variables read when a module is imported (caches and hub settings, thread pools,
#: backends, paths), by prefix or by name: a command whose environment differs from the
#: server's in one of them runs as a subprocess. Any other variable (pytest's name of the
#: current test, a setting a library read at run time, KMP_* that importing scikit-learn
#: sets and GNU OpenMP never reads) is set in the child before the command runs, as a new
#: process would see it.
IMPORT_TIME = (
    "HF_", "HUGGINGFACE", "TRANSFORMERS_", "DATASETS_", "TORCH", "PYTORCH_", "CUDA", "OMP_", "MKL_", "XDG_",
    "MPL", "TQDM_", "TOKENIZERS_", "USE_", "PYTHON", "LD_", "HOME", "TMPDIR", "PATH",
)
#: Read at run time although their prefix is above: the compile cache folder that torch sets
#: in the test process once something there compiles (an in-process ONNX export).
RUN_TIME = ("TORCHINDUCTOR_CACHE_DIR",)

#: Imported by the server before it forks: every command's heavy imports.
PRELOAD = (
    "torch",
    "transformers",
    "datasets",
    "finetune.run",
    "finetune.cli.main",
    "finetune.training.train",
    "finetune.evaluation.reports",
    "finetune.evaluation.plots",
    "finetune.inspection.run",
    "finetune.deploy.score",
    "finetune.deploy.predict",
    "finetune.deploy.export",
    "finetune.sweeps.search",
    "finetune.planning.new",
    "matplotlib.pyplot",
    "sklearn.metrics",
)

SERVER = r"""
import importlib, json, os, sys
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError as err:
        if (err.name or "").startswith("finetune"):  # a module of ours misnamed here
            raise
        # (else an optional extra that is not installed)
from tests.helpers.forkserver import child
requests, replies = sys.stdin.buffer, sys.stdout.buffer
replies.write(b'{"ready": true}\n'); replies.flush()
for line in requests:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)  # never returns
    replies.write(json.dumps({"pid": pid}).encode() + b"\n"); replies.flush()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    replies.write(json.dumps({"code": code}).encode() + b"\n"); replies.flush()
"""


def child(request: dict) -> None:
    """In the forked child: become the command's process, run it, exit as the interpreter would."""
    import atexit
    import io
    import traceback

    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.dup2(target, fd)
            os.close(target)
        # Unbuffered, as PYTHONUNBUFFERED=1 makes a new interpreter's streams.
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace")
        if "code" in request:  # python -c CODE ARGS
            sys.argv = ["-c", *request["args"]]
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:  # python finetune/run.py ARGS
            sys.argv = [request["script"], *request["args"]]
            from finetune.run import cli

            cli()
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:  # sys.exit("message"): printed, exit code 1
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the interpreter prints it and exits 1
        traceback.print_exc()
    finally:
        try:
            threading._shutdown()  # the interpreter joins non-daemon threads before the exit handlers
            atexit._run_exitfuncs()  # finetune.run.cli's last handler ends the process itself
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        finally:
            os._exit(code)


class ForkServer:
    """One server process, started on first use; :meth:`run` is ``subprocess.run`` for the
    command line with ``capture_output=True, text=True``."""

    def __init__(self, root: str, env: dict[str, str]) -> None:
        self.root, self.env = root, dict(env)
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a command with environment ``env`` may run here (else: a subprocess)."""
        changed = {k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k)} - set(RUN_TIME)
        return not any(k.startswith(IMPORT_TIME) for k in changed)

    def _start(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-c", SERVER, json.dumps(PRELOAD)],
                cwd=self.root, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )
            assert json.loads(self._process.stdout.readline()) == {"ready": True}
        return self._process

    def _reply(self, process: subprocess.Popen, timeout: float | None) -> dict | None:
        if timeout is not None:
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, timeout))
            if not ready:
                return None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the fork server ended")
        return json.loads(line)

    def run(
        self, command: list[str], cwd: str, env: dict[str, str], args: list[str], timeout: float | None,
        code: str | None = None,
    ):
        with self._lock, tempfile.TemporaryDirectory(prefix="forkserver-") as folder:
            paths = {name: os.path.join(folder, name) for name in ("stdout", "stderr")}
            for path in paths.values():
                open(path, "wb").close()
            process = self._start()
            request = {"cwd": cwd, "env": env, "script": command[1], "args": args, **paths}
            if code is not None:
                request["code"] = code
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
            pid = self._reply(process, None)["pid"]
            started = time.monotonic()
            reply = self._reply(process, None if timeout is None else timeout)
            if reply is None:  # as subprocess.run: kill the child, then raise
                os.kill(pid, signal.SIGKILL)
                self._reply(process, None)
                out, err = (_read(paths[name]) for name in ("stdout", "stderr"))
                raise subprocess.TimeoutExpired(command, time.monotonic() - started, out, err)
            out, err = (_read(paths[name]) for name in ("stdout", "stderr"))
            return subprocess.CompletedProcess(command, reply["code"], out, err)

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait(timeout=30)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()
