"""The real command line in a new process (offline), the recipes it reads, and what its quick answers may import."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.forkserver import ForkServer


def write_recipe(path: Path, model_path: Path | str, dataset: Path | str, output_dir: Path, **extra) -> Path:
    """A small full fine-tune recipe written to ``path``; ``section__key=value`` or ``section=value`` change it."""
    recipe = {
        "description": "test recipe",
        "expected": {"metric": "accuracy", "value": 0.9},
        "model": {"name_or_path": str(model_path), "strategy": "full"},
        "data": {"dataset": str(dataset), "augment": {"crop_scale": [0.8, 1.0], "hflip": True}},
        "training": {
            "num_train_epochs": 2,
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 8,
            "seed": 0,
            "use_cpu": True,
            "disable_tqdm": True,
        },
        "output_dir": str(output_dir),
    }
    for key, value in extra.items():
        section, _, field = key.partition("__")
        if field:
            recipe.setdefault(section, {})[field] = value
        else:
            recipe[section] = value
    path.write_text(json.dumps(recipe, indent=2))
    return path


def _env() -> dict[str, str]:
    """The environment of a command: this process's, offline, unbuffered."""
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")


_SERVERS: dict[int, ForkServer] = {}
#: The environment the fork server starts with: the test process's as the tests were
#: collected, before any test changed it (a test that sets a variable read at import gets a
#: subprocess).
_SERVER_ENV = _env()


def _server(env: dict[str, str], launcher: list[str] | None) -> ForkServer | None:
    """This process's fork server, when a command with ``env`` and ``launcher`` may use it."""
    server = _SERVERS.get(os.getpid())  # (a forked test process starts its own)
    if server is None:
        server = _SERVERS[os.getpid()] = ForkServer(str(ROOT), _SERVER_ENV)
        atexit.register(server.close)
    usable = launcher is None and os.environ.get("FINETUNE_TEST_FORKSERVER", "1") == "1" and server.serves(env)
    return server if usable else None


def run_cli(*args: str, cwd: Path | None = None, launcher: list[str] | None = None, timeout: int = 600):
    """Run the real command line in a new process (offline): ``python finetune/run.py ARGS``,
    forked from a server that has its imports done (tests/helpers/forkserver.py), or, with a
    launcher or an environment the server was not started with, a plain subprocess."""
    env = _env()
    command = (launcher or [sys.executable]) + [str(ROOT / "finetune" / "run.py"), *args]
    server = _server(env, launcher)
    if server is not None:
        return server.run(command, str(cwd or ROOT), env, list(args), timeout)
    return subprocess.run(command, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_python(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` in a new process with this checkout importable, forked from the
    same server as :func:`run_cli` (its imports done), or a plain subprocess."""
    env = _env()
    command = [sys.executable, "-c", code, *args]
    server = _server(env, None)
    if server is not None:
        return server.run(command, str(ROOT), env, list(args), timeout, code=code)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


#: Modules that take seconds to import on a small machine; none is needed to print help, check
#: a recipe or report what is wrong with one.
HEAVY = ("torch", "transformers", "datasets", "matplotlib", "timm", "huggingface_hub")

#: A script that runs finetune.run.main on each argv of its first argument (JSON), then prints
#: the exit codes and which of the modules named in its second argument got imported.
IMPORT_PROBE = """
import json, sys
from finetune.run import main

codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as exit:  # argparse's --help
        codes.append(exit.code)
print(json.dumps({"codes": codes, "loaded": sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)}))
"""
