"""`finetune new DATA [--model ID] [--minutes N] [--out recipe.json] [--search N]`: a recipe chosen from the data, this machine and a time budget."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from finetune.cli.common import checked, positive_int, run_heavy

HELP = "write a starting recipe chosen from your data, this machine and a time budget"


def minutes(text: str) -> float:
    """An argparse type: a positive number of minutes."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATA", help="what data.dataset accepts: an image folder (train/CLASS/*.jpg, "
                        "test/CLASS/...), a CSV/JSONL/parquet file, a Hub id, builtin:digits")
    parser.add_argument("--model", default=None, help="the backbone (a Hub id, a local folder, builtin:NAME); default: "
                        "a built-in model sized to the machine and the budget")
    parser.add_argument("--minutes", type=minutes, default=10.0, help="the time the run may take, whole command (default: 10)")
    parser.add_argument("--out", default="recipe.json", help="where to write the recipe (default: recipe.json); an "
                        "existing file is kept unless --force")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--search", type=positive_int, default=None, metavar="N",
                        help="write a search block around the choices, for `finetune search --trials N`")
    parser.add_argument("--train-split", default="train", help="the split to train on (default: train)")
    parser.add_argument("--output-dir", default=None, help="the recipe's output_dir (default: outputs/<data folder name>)")


def _check(args: argparse.Namespace) -> Path:
    from finetune.recipe import RecipeError

    out = Path(args.out)
    if out.is_dir():
        raise RecipeError(f"--out {out}: is a folder; name the recipe file to write, e.g. {out / 'recipe.json'}")
    if out.exists() and not args.force:
        raise RecipeError(f"--out {out}: the file exists and is kept; pass --force to replace it, or name another file")
    if not out.parent.exists():
        raise RecipeError(f"--out {out}: no folder {out.parent}; create it or name another file")
    return out


def run(args: argparse.Namespace) -> int:
    out, code = checked(lambda: _check(args))
    if code is not None:
        return code

    def work() -> None:
        from finetune.planning.new import make_plan
        from finetune.utils.files import write_text

        scan, timing, plan = make_plan(
            args.dataset, model=args.model, minutes=args.minutes, train_split=args.train_split,
            output_dir=args.output_dir, search_trials=args.search,
        )
        print("\n".join(scan.lines()))
        print("chosen:")
        for note in plan.notes:
            print(f"  - {note}")
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in plan.seconds.items())
        print(f"planned: about {plan.total_seconds:.0f} s of the {args.minutes * 60:.0f} s asked ({stages})")
        write_text(out, json.dumps(plan.recipe, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {out} (checked: `finetune validate {shlex.quote(str(out))}` passes)")
        if args.search:
            print(f"run the search: finetune search {shlex.quote(str(out))} --trials {args.search}")
        else:
            print(f"run it: accelerate launch finetune/run.py --recipe {shlex.quote(str(out))}")
            print(f"   or: finetune train --recipe {shlex.quote(str(out))}")
        sys.stdout.flush()

    _, code = run_heavy(work, ctrl_c="stopped by Ctrl-C; no recipe was written")
    return code or 0
