"""`finetune cache list` and `finetune cache remove --run DIR | --older-than DAYS | --orphaned | --all [--dry-run]`: the decode caches."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

HELP = "list or remove the decode caches (each run's images, decoded once and kept for its reruns)"


def _days(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of days >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="{list,remove}")
    actions.add_parser("list", help="each decode cache: its size, last use, data set, split and runs")
    remove = actions.add_parser("remove", help="delete decode caches (only their own files)")
    which = remove.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="OUTPUT_DIR", help="the caches a run folder used (it may be gone already)")
    which.add_argument("--older-than", type=_days, metavar="DAYS", help="the caches not used for this many days")
    which.add_argument("--orphaned", action="store_true", help="the caches whose run folders are all gone")
    which.add_argument("--all", action="store_true", help="every decode cache")
    remove.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _runs(entry) -> str:
    if not entry.runs:
        return "no run"
    return ", ".join(run + ("" if Path(run).is_dir() else " (folder gone)") for run in entry.runs)


def _line(entry) -> str:
    return (
        f"{_size(entry.size()):>9}  last used {entry.last_used.replace('T', ' ')[:16]}  {entry.images} images  "
        f"{entry.split} of {entry.dataset}  runs: {_runs(entry)}  in {entry.folder}"
    )


def run(args: argparse.Namespace) -> int:
    from finetune.data import cache_store

    every = cache_store.entries()
    if args.action == "list":
        for entry in every:
            print(_line(entry))
        total = sum(entry.size() for entry in every)
        print(
            f"{len(every)} decode cache(s), {_size(total)}, indexed in {cache_store.index_folder()}; "
            "`finetune cache remove --run DIR | --older-than DAYS | --orphaned | --all` removes them"
        )
        return 0
    chosen = cache_store.select(
        every, run=args.run, older_than_days=args.older_than, orphaned=args.orphaned, everything=args.all
    )
    verb = "would remove" if args.dry_run else "removed"
    freed = 0
    for entry in chosen:
        shared = [r for r in entry.runs if args.run is None or r != str(Path(args.run).resolve())]
        note = f" (also used by {', '.join(shared)})" if args.run is not None and shared else ""
        print(f"{verb}: {_line(entry)}{note}")
        freed += entry.size() if args.dry_run else cache_store.remove(entry)
    if not chosen:
        which = f"for {shlex.quote(args.run)}" if args.run is not None else "that matches"
        print(f"no decode cache {which}; `finetune cache list` lists them all")
    else:
        print(f"{verb} {len(chosen)} decode cache(s), {_size(freed)}" + ("; nothing was deleted" if args.dry_run else ""))
    return 0
