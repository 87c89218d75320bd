"""Inference from a saved output folder: `finetune eval` and `finetune predict` (issue #4)."""

from __future__ import annotations

import argparse


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir")


def add_predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir")


def cmd_eval(args: argparse.Namespace) -> int:
    raise NotImplementedError


def cmd_predict(args: argparse.Namespace) -> int:
    raise NotImplementedError
