"""Publishing to the Hugging Face Hub: `finetune push` and `hub.push` in recipes (issue #4)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_push_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir")


def cmd_push(args: argparse.Namespace) -> int:
    raise NotImplementedError


def push(out: Path, repo_id: str, private: bool = True, revision: str | None = None) -> str:
    raise NotImplementedError
