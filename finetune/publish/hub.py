"""Publishing to the Hugging Face Hub: `finetune push` and `hub.push` in recipes.

What goes up is decided in one place (``UPLOAD_ALLOW`` / ``UPLOAD_IGNORE``) and filtered
with huggingface_hub's own ``filter_repo_objects``, the function ``upload_folder`` uses, so
``--dry-run`` lists exactly what a push uploads. Before anything is sent the folder is
checked (weights, config, a card whose metadata parses and whose model-index equals
``eval_results.json``), then one bounded request finds out whether the Hub can be reached
with the token; only then are the repo, the branch and the commit made. Every failure is a
``PushError`` whose one-line message gives the command to retry with; the local folder is
only read, never written.

The token comes from ``HF_TOKEN`` or ``hf auth login`` (``huggingface_hub.get_token``),
never from a recipe or an option, and is never printed, logged or written.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.recipe.metric_names import HUB_TYPES
from finetune.utils.errors import UserError, first_line

#: The files of an output folder that belong on the Hub (fnmatch patterns on the path
#: relative to the folder; exact names, so nothing nested is matched by accident).
#: Left out on purpose: trainer_state.json (holds local checkpoint paths) and
#: data_report.json (lists the local paths of unreadable files).
UPLOAD_ALLOW = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",  # sharded weights
    "preprocessor_config.json",
    "README.md",
    "train_results.json",
    "eval_results.json",
    "all_results.json",
    "eval_report.json",
    "recipe.json",
    "confusion_matrix.png",
    "misclassified.png",
    "training_curves.png",
    "calibration.json",
    "reliability.png",  # the card shows it
)
#: Never uploaded, even if a pattern above matched: checkpoints and optimizer state
#: (big, and only for resuming), the pickled TrainingArguments (unsafe to unpickle, full
#: of local paths), half-written files, hidden files, and `finetune eval` reports on other
#: data sets (which may describe private data).
UPLOAD_IGNORE = (
    "checkpoint-*",
    "checkpoint-*/**",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "*.tmp",
    ".*",
    "**/.*",
    "eval-*/**",
    "runs/**",
)
#: Files a pushed model cannot do without.
REQUIRED = ("config.json", "README.md", "eval_results.json")


class PushError(UserError, RuntimeError):
    """The push did not happen; the message is one line and ends with the retry command."""


@dataclass
class Plan:
    """What a push of ``folder`` would upload, after the local checks."""

    folder: Path
    files: list[str]
    num_results: int


# ------------------------------------------------------------------------ local checks


def planned_files(out: Path) -> list[str]:
    """The paths (relative, posix) that ``upload_folder`` would upload, sorted."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    paths = sorted(p.relative_to(out).as_posix() for p in out.glob("**/*") if p.is_file())
    ignore = list(UPLOAD_IGNORE) + list(DEFAULT_IGNORE_PATTERNS)
    return list(filter_repo_objects(paths, allow_patterns=list(UPLOAD_ALLOW), ignore_patterns=ignore))


def check_card(out: Path) -> int:
    """Parse README.md's metadata with huggingface_hub and check that its model-index
    holds exactly the numbers of eval_results.json; returns how many results it has."""
    from huggingface_hub import ModelCard

    card_path, results_path = out / "README.md", out / "eval_results.json"
    try:
        card = ModelCard.load(card_path)
        data = card.data.to_dict()
        results = card.data.eval_results or []
    except Exception as err:  # noqa: BLE001 - yaml, ValueError from model-index parsing, ...
        raise PushError(
            f"{card_path}: the card's metadata does not parse ({first_line(err)}); re-run training to rewrite it"
        ) from None
    try:
        expected = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PushError(f"{results_path}: unreadable ({first_line(err)}); re-run training to rewrite it") from None
    if data.get("pipeline_tag") != "image-classification":
        raise PushError(f"{card_path}: pipeline_tag is {data.get('pipeline_tag')!r}, not 'image-classification'")
    ours = {hub_type: name for name, hub_type in HUB_TYPES.items()}
    in_card: dict[str, float] = {}
    for result in results:
        name = ours.get(result.metric_type)
        if name is None:
            raise PushError(f"{card_path}: model-index has an unknown metric type {result.metric_type!r}")
        in_card[name] = float(result.metric_value)
    recipe_metrics = read_run_recipe(out).get("metrics") or list(HUB_TYPES)
    in_results = {m: expected[f"eval_{m}"] for m in recipe_metrics if f"eval_{m}" in expected}
    if set(in_card) != set(in_results) or any(
        not math.isclose(in_card[m], float(in_results[m]), rel_tol=1e-12, abs_tol=0.0) for m in in_card
    ):
        raise PushError(
            f"{card_path}: model-index results {_fmt(in_card)} differ from eval_results.json {_fmt(in_results)}; "
            "re-run training (or restore the card) so that they agree"
        )
    return len(in_card)


def _fmt(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {float(v):.6g}" for k, v in sorted(values.items())) + "}"


def read_run_recipe(out: Path) -> dict[str, Any]:
    try:
        recipe = json.loads((out / "recipe.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return recipe if isinstance(recipe, dict) else {}


def check_folder(out: Path) -> Plan:
    """Everything that can be checked without the network; raises PushError."""
    out = Path(out)
    if not out.is_dir():
        raise PushError(f"OUTPUT_DIR: no such folder '{out}'; pass the output_dir of a finished run")
    missing = [name for name in REQUIRED if not (out / name).is_file()]
    files = planned_files(out)
    if not any(f == "model.safetensors" or f == "model.safetensors.index.json" for f in files):
        missing.append("model.safetensors")
    if missing:
        raise PushError(
            f"OUTPUT_DIR: '{out}' lacks {', '.join(missing)}; push the output_dir of a finished run "
            "(re-run the recipe to finish it)"
        )
    return Plan(out, files, check_card(out))


def check_repo_id(repo_id: str | None) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo_id:
        raise PushError("--repo-id: missing; pass --repo-id USER/NAME (or set hub.repo_id in the recipe)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"--repo-id: '{repo_id}' is not a valid repo id ({first_line(err)}); use USER/NAME") from None
    return repo_id


# ----------------------------------------------------------------------------- pushing


def retry_command(out: Path, repo_id: str, private: bool, revision: str | None) -> str:
    parts = ["finetune", "push", str(out), "--repo-id", repo_id]
    if revision:
        parts += ["--revision", revision]
    parts.append("--private" if private else "--public")
    return shlex.join(parts)


def _scrub(text: str, token: str | None) -> str:
    """Error texts from the HTTP stack could echo a request; never let the token through."""
    return text.replace(token, "hf_***") if token else text


def _offline() -> bool:
    from huggingface_hub import constants

    # constants are read at import time; the environment may have changed since.
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return constants.is_offline_mode() or env


def has_token() -> bool:
    """Whether a token is configured, without network (OIDC exchange, OAuth refresh)."""
    from huggingface_hub import constants

    return bool(os.environ.get("HF_TOKEN")) or Path(constants.HF_TOKEN_PATH).is_file()


def _preflight(endpoint: str, token: str) -> None:
    """One request with a bounded timeout and no retries: can the Hub be reached, and does
    it accept the token for writing? huggingface_hub's own client has no timeout and its
    uploads retry with backoff, so without this a missing network could hang a push."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session

    try:
        response = get_session().get(
            f"{endpoint}/api/whoami-v2",
            headers=build_hf_headers(token=token),
            timeout=float(constants.HF_HUB_ETAG_TIMEOUT),
        )
    except Exception as err:  # noqa: BLE001 - connection refused, DNS, timeout, offline mode, ...
        raise PushError(f"cannot reach {endpoint} ({type(err).__name__}: {first_line(err)})") from None
    if response.status_code == 401:
        raise PushError(
            f"{endpoint} rejected the token (from HF_TOKEN or `hf auth login`); set a valid write token"
        )
    if response.status_code >= 400:
        raise PushError(f"{endpoint} answered HTTP {response.status_code} to the token check")
    try:
        role = response.json().get("auth", {}).get("accessToken", {}).get("role")
    except (ValueError, AttributeError):
        role = None
    if role == "read":
        raise PushError("the token (from HF_TOKEN or `hf auth login`) is read-only; use a token with write access")


def push(out: Path, repo_id: str, private: bool = True, revision: str | None = None) -> str:
    """Upload ``out`` to the model repo ``repo_id`` (created if needed; ``revision`` is a
    branch, created from main if needed); returns the commit's URL. Raises PushError."""
    out = Path(out)
    retry = retry_command(out, repo_id or "USER/NAME", private, revision)

    def fail(what: str, token: str | None = None) -> PushError:
        return PushError(_scrub(f"push to the Hub failed: {what}; nothing was changed in {out}; retry with: {retry}", token))

    try:
        check_repo_id(repo_id)
        plan = check_folder(out)
    except PushError as err:
        raise fail(str(err)) from None
    except OSError as err:  # e.g. an unreadable file in the folder
        raise fail(f"cannot read {out} ({first_line(err)})") from None
    if _offline():
        raise fail("HF_HUB_OFFLINE is set, so the Hub cannot be reached (unset it first)")
    from huggingface_hub import HfApi, get_token

    try:
        token = get_token()
    except Exception as err:  # noqa: BLE001 - e.g. a failed OIDC exchange
        raise fail(f"cannot get a Hugging Face token ({type(err).__name__})") from None
    if not token:
        raise fail("no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    try:
        _preflight(api.endpoint, token)
    except PushError as err:
        raise fail(str(err), token) from None
    step = "creating the repo"
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        if revision:
            step = f"creating branch '{revision}'"
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        step = "uploading"
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=out,
            repo_type="model",
            revision=revision,
            # Copies: upload_folder appends its defaults to the list it is given.
            allow_patterns=list(UPLOAD_ALLOW),
            ignore_patterns=list(UPLOAD_IGNORE),
            commit_message=f"finetune: upload {out.name} ({len(plan.files)} files)",
        )
    except Exception as err:  # noqa: BLE001 - HTTP errors, network errors, quota, ...
        raise fail(f"{step} in {repo_id} ({type(err).__name__}: {first_line(err)})", token) from None
    return str(getattr(info, "commit_url", info))


# --------------------------------------------------------------------------------- CLI


