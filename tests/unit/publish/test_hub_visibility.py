"""hub.py before anything is public: the warning that names what goes up, --private refused against a public repo, local paths out of the uploaded recipe and card. The Hub's API is stubbed: no network."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi

from finetune.cli.main import main
from finetune.publish import hub
from tests.helpers.runs import FAKE_TOKEN, file_hashes, trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture
def api(monkeypatch):
    """Online, with a fake token; the token check passes, ``repo_info`` answers from
    ``state["repos"]`` (repo id → private?), and every call that would change the Hub is recorded."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    state = {"repos": {}, "calls": []}
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_preflight", lambda endpoint, token: None)

    def repo_info(self, repo_id, **kwargs):
        state["calls"].append(("repo_info", repo_id))
        if repo_id not in state["repos"]:
            url = f"https://hub.invalid/api/models/{repo_id}"
            raise RepositoryNotFoundError(f"{repo_id} not found", response=httpx2.Response(404, request=httpx2.Request("GET", url)))
        return SimpleNamespace(private=state["repos"][repo_id])

    def recorder(name):
        def method(self, *args, **kwargs):
            state["calls"].append((name, args, kwargs))
            return SimpleNamespace(commit_url="https://hub.invalid/commit/1")

        return method

    monkeypatch.setattr(HfApi, "repo_info", repo_info)
    for name in ("create_repo", "create_branch", "create_commit", "upload_folder", "update_repo_settings"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    return state


def _changes(state) -> list[str]:
    return [call[0] for call in state["calls"] if call[0] != "repo_info"]


def test_a_new_public_repo_is_announced_before_it_is_made(run, api) -> None:
    said = []

    def say(text):
        said.append((text, list(_changes(api))))  # what had been done when it was said

    hub.push(run.out, "me/new", private=False, say=say)
    warning, done_before = said[0]
    assert done_before == [] and warning.startswith("warning: me/new will be a new PUBLIC repo")
    assert "misclassified.png shows images of the eval split" in warning and "model.safetensors" in warning
    assert _changes(api) == ["create_repo", "create_commit"]
    assert api["calls"][1][2]["private"] is False


def test_an_existing_public_repo_is_announced_too(run, api) -> None:
    api["repos"]["me/pub"] = False
    said = []
    hub.push(run.out, "me/pub", private=False, say=said.append)
    assert said[0].startswith("warning: me/pub is PUBLIC on the Hub: anyone can download")


def test_private_against_a_public_repo_is_refused(run, api) -> None:
    api["repos"]["me/pub"] = False
    before = file_hashes(run.out)
    with pytest.raises(hub.PushError) as err:
        hub.push(run.out, "me/pub", private=True)
    message = str(err.value)
    assert "\n" not in message and "me/pub is public on the Hub" in message
    assert "make it private on the Hub first" in message and "--public knowingly" in message
    assert _changes(api) == [] and file_hashes(run.out) == before


def test_a_private_push_says_nothing_public(run, api) -> None:
    said = []
    hub.push(run.out, "me/new", private=True, say=said.append)
    assert not any("PUBLIC" in line for line in said)
    api["repos"]["me/secret"] = True
    hub.push(run.out, "me/secret", private=False, say=said.append)  # the Hub's setting stays private
    assert any("me/secret is private on the Hub; --public does not change that" in line for line in said)
    assert not any("PUBLIC" in line for line in said)


def test_the_recipe_and_card_go_up_without_local_paths(run, api, tmp_path) -> None:
    out = shutil.copytree(run.out, tmp_path / "out")
    local = json.loads((out / "recipe.json").read_text())
    assert local["data"]["dataset"].startswith("/") and str(run.out.parent) in (out / "README.md").read_text()
    before = file_hashes(out)
    said = []
    hub.push(out, "me/new", private=True, say=said.append)
    (commit,) = [c for c in api["calls"] if c[0] == "create_commit"]
    sent = {op.path_in_repo: op for op in commit[2]["operations"]}
    assert set(sent) == set(hub.planned_files(out))
    recipe = json.loads(sent["recipe.json"].path_or_fileobj)
    card = sent["README.md"].path_or_fileobj.decode()
    assert recipe["data"]["dataset"] == "<local>/images" and recipe["model"]["name_or_path"] == "<local>/vit"
    assert recipe["output_dir"] == "<local>/out"
    for path in (str(tmp_path), str(run.out.parent), "/tmp/"):
        assert path not in json.dumps(recipe) and path not in card
    assert "<local>/images" in card
    assert any("local path(s) replaced by <local>/NAME in the uploaded README.md and recipe.json" in s for s in said)
    assert "replaced" in commit[2]["commit_description"]
    assert file_hashes(out) == before  # the local files stay as they are


def test_push_public_from_the_command_line_warns_and_dry_run_shows_the_paths(run, api, capsys) -> None:
    assert main(["push", str(run.out), "--repo-id", "me/new", "--public"]) == 0
    err = capsys.readouterr().err
    assert "finetune: warning: me/new will be a new PUBLIC repo on the Hub" in err
    assert main(["push", str(run.out), "--public", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "local paths:" in out and "<local>/NAME" in out and "will be PUBLIC" in out
