"""Publishing to the Hugging Face Hub: `finetune push` and `hub.push` in recipes.

What goes up is decided in one place (``UPLOAD_ALLOW`` / ``UPLOAD_IGNORE``), filtered with
huggingface_hub's own ``filter_repo_objects`` (as ``upload_folder`` filters), and sent as one
commit of exactly those files, so ``--dry-run`` lists exactly what a push uploads. Before anything is sent the folder is
checked (weights, config, a card whose metadata parses and whose model-index equals
``eval_results.json``), then one bounded request finds out whether the Hub can be reached
with the token; only then are the repo, the branch and the commit made. Every failure is a
``PushError`` whose one-line message gives the command to retry with; the local folder is
only read, never written.

What goes public is said first: before a push makes anything public (a new public repo, or
an existing one), one warning on the terminal names the files and that ``misclassified.png``
(``worst_images.png`` for a multi-label run) shows images of the eval split; ``--private`` (``hub.private: true``) against a repo that is
public on the Hub is refused rather than published into. ``recipe.json`` and the card go up
with the absolute local paths in them (data, model, output folder) replaced by
``<local>/NAME``, and the upload's log line says so; the local files stay as they are.

The token comes from ``HF_TOKEN`` or ``hf auth login`` (``huggingface_hub.get_token``),
never from a recipe or an option, and is never printed, logged or written.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
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
    "per_class_ap.png",  # a multi-label run's pictures, in place of the two above
    "worst_images.png",
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
#: What an absolute local path becomes in the uploaded recipe.json and card: ``<local>/NAME``.
LOCAL = "<local>"
#: Uploaded files that show images of the eval split, or its per-class results.
EVAL_IMAGES = ("misclassified.png", "worst_images.png")
EVAL_RESULTS = ("confusion_matrix.png", "per_class_ap.png", "eval_report.json")


class PushError(UserError, RuntimeError):
    """The push did not happen; the message is one line and ends with the retry command."""


@dataclass
class Plan:
    """What a push of ``folder`` would upload, after the local checks."""

    folder: Path
    files: list[str]
    num_results: int
    #: Uploaded files whose content goes up with local paths replaced: name → the bytes sent.
    replaced: dict[str, bytes] = field(default_factory=dict)
    #: The local paths replaced, as they were.
    local_paths: list[str] = field(default_factory=list)

    def describe_replaced(self) -> str:
        """One clause for the log, or "" when nothing was replaced."""
        if not self.replaced:
            return ""
        return (
            f"{len(self.local_paths)} local path(s) replaced by {LOCAL}/NAME in the uploaded "
            f"{' and '.join(sorted(self.replaced))} (the local files are unchanged)"
        )


# ------------------------------------------------------------------------ local paths


def _is_local_path(value: str) -> bool:
    """An absolute path of this machine (POSIX, ``~``, a Windows drive or share)."""
    return "\n" not in value and (value.startswith(("/", "~", "\\\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", value)))


def _public_name(path: str) -> str:
    name = re.split(r"[\\/]", path.rstrip("/\\"))[-1]
    return f"{LOCAL}/{name}" if name and name != "~" else LOCAL


def scrub_recipe(recipe: Any, found: dict[str, str]) -> Any:
    """``recipe`` with every absolute local path (data set, model, teacher, output folder...)
    replaced by ``<local>/NAME``; ``found`` gets each path and what replaced it."""
    if isinstance(recipe, dict):
        return {k: scrub_recipe(v, found) for k, v in recipe.items()}
    if isinstance(recipe, list):
        return [scrub_recipe(v, found) for v in recipe]
    if isinstance(recipe, str) and _is_local_path(recipe):
        found[recipe] = _public_name(recipe)
        return found[recipe]
    return recipe


def _scrubbed(out: Path) -> tuple[dict[str, bytes], list[str]]:
    """The bytes that go up instead of recipe.json and README.md, when they hold local paths:
    the recipe's paths, and the output folder's, wherever the card shows them."""
    found: dict[str, str] = {}
    recipe = read_run_recipe(out)
    public = scrub_recipe(recipe, found)
    for folder in {str(out.absolute()), str(out.resolve())}:
        found.setdefault(folder, _public_name(folder))
    replaced: dict[str, bytes] = {}
    if public != recipe:
        replaced["recipe.json"] = (json.dumps(public, indent=2) + "\n").encode("utf-8")
    card = (out / "README.md").read_text(encoding="utf-8")
    scrubbed = card
    for path in sorted(found, key=len, reverse=True):  # the longest first: no path is cut in two
        scrubbed = scrubbed.replace(path, found[path])
    if scrubbed != card:
        replaced["README.md"] = scrubbed.encode("utf-8")
    in_recipe: dict[str, str] = {}
    scrub_recipe(recipe, in_recipe)
    return replaced, sorted(p for p in found if p in in_recipe or p in card)


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
    # The extra evaluation sets' results are under their own names (data.eval_sets), the eval
    # split's under the data set's: each compared with its own numbers.
    sets = (read_run_recipe(out).get("data") or {}).get("eval_sets") or {}
    set_names = list(sets) if isinstance(sets, dict) else []
    in_card: dict[str, float] = {}
    for result in results:
        name = ours.get(result.metric_type)
        if name is None:
            raise PushError(f"{card_path}: model-index has an unknown metric type {result.metric_type!r}")
        prefix = result.dataset_name if result.dataset_name in set_names else "eval"
        in_card[f"{prefix}_{name}"] = float(result.metric_value)
    # What the run computed, as eval_results.json holds it (not the recipe's metrics list: a
    # multi-label run computes its own metrics when the recipe leaves the single-label default).
    in_results = {
        key: expected[key] for key in (f"{prefix}_{m}" for prefix in ("eval", *set_names) for m in HUB_TYPES)
        if isinstance(expected.get(key), (int, float)) and not isinstance(expected.get(key), bool)
    }
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
    num_results = check_card(out)
    replaced, local_paths = _scrubbed(out)
    return Plan(out, files, num_results, {k: v for k, v in replaced.items() if k in files}, local_paths)


def public_warning(plan: Plan, repo_id: str, new: bool | None) -> str:
    """What a push to a public repo makes public, in one line."""
    # The weights first: whatever else goes up, the model itself is what the warning must name.
    ordered = sorted(plan.files, key=lambda f: not (f.startswith("model") and f.endswith(".safetensors")))
    shown = ", ".join(ordered[:8]) + (f" and {len(plan.files) - 8} more" if len(plan.files) > 8 else "")
    split = (read_run_recipe(plan.folder).get("data") or {}).get("eval_split") or "validation piece"
    eval_images = [f for f in EVAL_IMAGES if f in plan.files]
    eval_results = [f for f in EVAL_RESULTS if f in plan.files]
    about = (f"; {' and '.join(eval_images)} shows images of the eval split ({split})" if eval_images else "") + (
        f", and {', '.join(eval_results)} its per-class results" if eval_results else ""
    )
    return (
        f"{repo_id} {'is PUBLIC' if new is False else 'will be a new PUBLIC repo' if new else 'will be PUBLIC'} on the "
        "Hub: anyone can download the "
        f"{len(plan.files)} files that go up ({shown}){about}; to keep them private, stop now and pass --private "
        "(or set hub.private: true)"
    )


def _say(text: str) -> None:
    print(f"finetune: {text}", file=sys.stderr, flush=True)


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


def push(
    out: Path, repo_id: str, private: bool = True, revision: str | None = None, say: Callable[[str], None] = _say,
) -> str:
    """Upload ``out`` to the model repo ``repo_id`` (created if needed; ``revision`` is a
    branch, created from main if needed); returns the commit's URL. Raises PushError.

    ``private``: a new repo is made private; an existing public one is refused rather than
    published into. Before anything goes to a public repo, ``say`` gets one line (a warning)
    saying what becomes public; and one saying which local paths the upload replaced."""
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
    try:
        public = _is_public(api, repo_id)
    except Exception as err:  # noqa: BLE001 - HTTP errors, network errors, ...
        raise fail(f"looking up {repo_id} ({type(err).__name__}: {first_line(err)})", token) from None
    if public and private:
        raise PushError(
            f"push to the Hub refused: {repo_id} is public on the Hub, and --private (or hub.private: true) asks for "
            f"a private repo, so nothing was published into it; make it private on the Hub first (its Settings), "
            f"or pass --public knowingly: {retry_command(out, repo_id, False, revision)}"
        )
    try:
        if public or (public is None and not private):
            say("warning: " + public_warning(plan, repo_id, new=public is None))
        elif not private:  # (public is False) the Hub's setting stays: the push does not change it
            say(f"note: {repo_id} is private on the Hub; --public does not change that (its Settings on the Hub do)")
        step = "creating the repo"
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        if revision:
            step = f"creating branch '{revision}'"
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        step = "uploading"
        info = api.create_commit(
            repo_id,
            operations=_operations(plan),
            commit_message=f"finetune: upload {out.name} ({len(plan.files)} files)",
            commit_description=plan.describe_replaced() or None,
            repo_type="model",
            revision=revision,
        )
    except Exception as err:  # noqa: BLE001 - HTTP errors, network errors, quota, ...
        raise fail(f"{step} in {repo_id} ({type(err).__name__}: {first_line(err)})", token) from None
    if plan.replaced:
        say(f"push: {plan.describe_replaced()}")
    return str(getattr(info, "commit_url", info))


def _is_public(api, repo_id: str) -> bool | None:
    """Whether the repo is public (None: there is none, or none this token can see)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return not api.repo_info(repo_id, repo_type="model").private
    except RepositoryNotFoundError:
        return None


def _operations(plan: Plan) -> list:
    """One commit of exactly the planned files (``planned_files``: the patterns above, through
    ``filter_repo_objects`` as ``upload_folder`` applies them), the scrubbed recipe and card
    sent from memory."""
    from huggingface_hub import CommitOperationAdd

    return [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=plan.replaced.get(name, plan.folder / name))
        for name in plan.files
    ]


# --------------------------------------------------------------------------------- CLI


