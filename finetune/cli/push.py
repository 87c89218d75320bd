"""`finetune push OUTPUT_DIR --repo-id USER/NAME`: upload a finished run to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from finetune.publish.hub import (
    PushError,
    check_folder,
    check_repo_id,
    has_token,
    public_warning,
    push,
    read_run_recipe,
)
from finetune.utils.errors import report

HELP = "upload an output folder to the Hugging Face Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a finished run's output folder")
    parser.add_argument("--repo-id", default=None, help="USER/NAME of the model repo (default: hub.repo_id of recipe.json)")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--private", dest="private", action="store_const", const=True, default=None,
        help="create the repo private (the default, unless recipe.json says hub.private false); "
        "a repo that is public on the Hub is refused",
    )
    visibility.add_argument(
        "--public", dest="private", action="store_const", const=False,
        help="create the repo public, or push into one that is public (warns first, naming what goes up)",
    )
    parser.add_argument("--revision", default=None, help="push to this branch, created if needed (default: main)")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="check the folder and the card and list the files that would be uploaded; no network",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    hub_cfg = (read_run_recipe(out).get("hub") or {}) if out.is_dir() else {}
    repo_id = args.repo_id or hub_cfg.get("repo_id")
    private = args.private if args.private is not None else bool(hub_cfg.get("private", True))
    revision = args.revision or hub_cfg.get("revision")
    if args.dry_run:
        try:
            check_repo_id(repo_id)
            plan = check_folder(out)
        except PushError as err:
            return report(str(err))
        print(
            f"dry run: would upload {len(plan.files)} files from {out} to {repo_id} "
            f"({'private' if private else 'public'}, branch {revision or 'main'}):"
        )
        for name in plan.files:
            print(f"  {name}")
        if plan.replaced:
            print(f"local paths: {plan.describe_replaced()}: {', '.join(plan.local_paths)}")
        if not private:
            print(f"warning: {public_warning(plan, repo_id, new=None)}")
        print(
            f"card ok: metadata parses, model-index has the {plan.num_results} result(s) of eval_results.json; "
            f"token: {'configured' if has_token() else 'none found (set HF_TOKEN or run `hf auth login`)'}; "
            "nothing was uploaded"
        )
        return 0
    from finetune.training.readers import reading

    try:
        # While a run rewrites the folder, the weights and the card could go up from two runs.
        with reading(out, PushError):
            url = push(out, repo_id, private=private, revision=revision)
    except PushError as err:
        return report(str(err))
    print(f"pushed {out} to {url}")
    return 0
