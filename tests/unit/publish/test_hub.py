"""hub.py: what a push uploads, the card check, the call sequence (HTTP layer stubbed). No test
touches the network: the Hub's HTTP client is replaced by an httpx2 MockTransport, and the
upload calls by recorders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from finetune.cli.main import main
from finetune.publish import hub
from tests.helpers.runs import FAKE_TOKEN, REPO_ID, file_hashes, trained_run

EXPECTED_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "train_results.json",
    "eval_results.json",
    "all_results.json",
    "eval_report.json",
    "recipe.json",
    "confusion_matrix.png",
    "misclassified.png",
    "training_curves.png",
    "calibration.json",
    "reliability.png",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture
def run_copy(run, tmp_path):
    """A copy of the finished run that a test may add files to."""
    return shutil.copytree(run.out, tmp_path / "out")


def _dry_run_files(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.startswith("  ")]


def test_dry_run_lists_exactly_the_upload(run_copy, capsys):
    assert any(p.name.startswith("checkpoint-") for p in run_copy.iterdir())
    assert (run_copy / "training_args.bin").is_file()
    # things that must never go up, even at the top level
    (run_copy / "config.json.tmp").write_text("{}")
    (run_copy / ".secret").write_text("x")
    (run_copy / "eval-other-test").mkdir()
    (run_copy / "eval-other-test" / "confusion_matrix.png").write_bytes(b"png")
    (run_copy / "notes.md").write_text("mine")

    assert main(["push", str(run_copy), "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed = _dry_run_files(out)
    assert set(listed) == EXPECTED_FILES and len(listed) == len(EXPECTED_FILES)
    assert REPO_ID in out and "private" in out  # taken from recipe.json's hub block
    assert "nothing was uploaded" in out


def test_card_metadata_parses_and_equals_eval_results(run):
    card = ModelCard.load(run.out / "README.md")
    meta = card.data.to_dict()
    assert meta["pipeline_tag"] == "image-classification" and meta["library_name"] == "transformers"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    expected = json.loads((run.out / "eval_results.json").read_text())
    assert results == {
        "accuracy": expected["eval_accuracy"],
        "f1": expected["eval_f1"],
        "precision": expected["eval_precision"],
        "recall": expected["eval_recall"],
    }
    assert hub.check_card(run.out) == 4


def test_dry_run_rejects_a_card_that_disagrees(run_copy, capsys):
    results = json.loads((run_copy / "eval_results.json").read_text())
    results["eval_accuracy"] = results["eval_accuracy"] / 2 + 0.01
    (run_copy / "eval_results.json").write_text(json.dumps(results))
    assert main(["push", str(run_copy), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ from eval_results.json" in err[0] and "README.md" in err[0]


def test_dry_run_needs_a_finished_run(run_copy, capsys):
    (run_copy / "model.safetensors").unlink()
    assert main(["push", str(run_copy), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "lacks model.safetensors" in capsys.readouterr().err


# --------------------------------------------------------------- stubbed Hub calls


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Online mode with a fake token; the HTTP client answers from a MockTransport (the token
    check, and no repo found) and HfApi's repo/branch/commit methods are recorders. Yields the record."""
    import httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    record = {"calls": [], "requests": [], "whoami": (200, {"name": "someone", "auth": {"accessToken": {"role": "write"}}})}
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Online, huggingface_hub also fetches (and caches in HF_HOME) a registry for its
    # user-agent header; keep that away from the real HF_HOME.
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))

    def handler(request):
        if request.url.path.startswith("/api/models/"):  # the repo's visibility: there is none yet
            return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"}, json={"error": "Repository not found"})
        if request.url.path != "/api/whoami-v2":
            return httpx2.Response(404, json={"error": "not stubbed"})
        record["requests"].append(request)
        status, body = record["whoami"]
        return httpx2.Response(status, json=body)

    def recorder(name, result=None):
        def method(self, *args, **kwargs):
            record["calls"].append((name, args, kwargs))
            return result

        return method

    commit = type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{REPO_ID}/commit/abc123"})()
    monkeypatch.setattr(HfApi, "create_repo", recorder("create_repo"))
    monkeypatch.setattr(HfApi, "create_branch", recorder("create_branch"))
    monkeypatch.setattr(HfApi, "create_commit", recorder("create_commit", commit))
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler), event_hooks={"request": [_http.hf_request_event_hook]}))
    try:
        yield record
    finally:
        set_client_factory(_http.default_client_factory)


def test_push_call_sequence_with_revision(run, fake_hub):
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    before = file_hashes(run.out)
    url = hub.push(run.out, "me/tiny", private=True, revision="exp-1")
    assert url.endswith("/commit/abc123")
    assert [name for name, _, _ in fake_hub["calls"]] == ["create_repo", "create_branch", "create_commit"]
    (_, repo_args, repo_kw), (_, br_args, br_kw), (_, up_args, up_kw) = fake_hub["calls"]
    assert repo_args == ("me/tiny",) and repo_kw["private"] is True and repo_kw["exist_ok"] is True
    assert br_args == ("me/tiny",) and br_kw["branch"] == "exp-1" and br_kw["exist_ok"] is True
    assert up_args == ("me/tiny",) and up_kw["revision"] == "exp-1"
    # One commit of what upload_folder would pick with the patterns (its own filter) = the dry-run
    # list; each file from the folder, but the recipe and the card, sent without local paths.
    sent = {op.path_in_repo: op.path_or_fileobj for op in up_kw["operations"]}
    files = sorted(p.relative_to(run.out).as_posix() for p in run.out.rglob("*") if p.is_file())
    picked = filter_repo_objects(
        files, allow_patterns=list(hub.UPLOAD_ALLOW), ignore_patterns=list(hub.UPLOAD_IGNORE) + DEFAULT_IGNORE_PATTERNS
    )
    assert set(picked) == set(sent) == EXPECTED_FILES == set(hub.planned_files(run.out))
    assert all(Path(sent[name]) == run.out / name for name in EXPECTED_FILES - {"recipe.json", "README.md"})
    # one bounded token check went out first, authenticated, before any repo call
    (request,) = fake_hub["requests"]
    assert request.url.path == "/api/whoami-v2"
    assert request.headers["authorization"] == f"Bearer {FAKE_TOKEN}"
    assert request.extensions["timeout"]["connect"] is not None
    assert file_hashes(run.out) == before


def test_push_without_revision_skips_branch_and_can_be_public(run, fake_hub, capsys):
    assert main(["push", str(run.out), "--repo-id", "me/pub", "--public"]) == 0
    assert [name for name, _, _ in fake_hub["calls"]] == ["create_repo", "create_commit"]
    assert fake_hub["calls"][0][2]["private"] is False
    assert fake_hub["calls"][1][2]["revision"] is None
    out = capsys.readouterr().out
    assert "commit/abc123" in out and FAKE_TOKEN not in out


@pytest.mark.parametrize(
    "status, body, message",
    [(401, {"error": "Invalid credentials"}, "rejected the token"),
     (200, {"name": "x", "auth": {"accessToken": {"role": "read"}}}, "read-only")],
)
def test_push_stops_at_a_bad_token(run, fake_hub, status, body, message):
    fake_hub["whoami"] = (status, body)
    with pytest.raises(hub.PushError) as info:
        hub.push(run.out, "me/tiny")
    text = str(info.value)
    assert message in text and f"finetune push {run.out} --repo-id me/tiny --private" in text
    assert FAKE_TOKEN not in text and "\n" not in text
    assert fake_hub["calls"] == []  # nothing was created


def test_push_upload_failure_is_push_error(run, fake_hub, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError(f"connection reset while sending Bearer {FAKE_TOKEN}")

    monkeypatch.setattr(HfApi, "create_commit", broken)
    with pytest.raises(hub.PushError) as info:
        hub.push(run.out, "me/tiny")
    assert "uploading in me/tiny" in str(info.value) and FAKE_TOKEN not in str(info.value)
