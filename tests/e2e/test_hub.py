"""`finetune push` through the command line without a network: a fast one-line failure with the
retry command, and the token never shown or stored."""

from __future__ import annotations

import pytest

from tests.helpers.runs import FAKE_TOKEN, file_hashes, run_cli_env, trained_run, trained_run_in_subprocess


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["HF_HUB_OFFLINE", "unreachable-endpoint"],
)
def test_push_offline_fails_fast_with_retry_command(run, env):
    before = file_hashes(run.out)
    # A push that hangs on the network fails here with TimeoutExpired (no wall-clock
    # assertion: a loaded machine must not make a correct push fail).
    result = run_cli_env("push", str(run.out), "--repo-id", "me/tiny", "--revision", "v1",
                         env={**env, "HF_TOKEN": FAKE_TOKEN}, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("finetune: error: push to the Hub failed: ")
    assert lines[0].endswith(f"retry with: finetune push {run.out} --repo-id me/tiny --revision v1 --private")
    assert ("HF_HUB_OFFLINE" in lines[0]) if env["HF_HUB_OFFLINE"] == "1" else ("127.0.0.1:9" in lines[0])
    assert file_hashes(run.out) == before


@pytest.mark.e2e
def test_token_never_leaks(tmp_path_factory):
    """The run is trained through the command line with HF_TOKEN set (see tests/helpers/runs.py);
    neither it, a dry run, nor a failed push may show or store the token."""
    run = trained_run_in_subprocess(tmp_path_factory)
    dry = run_cli_env("push", str(run.out), "--dry-run", env={"HF_TOKEN": FAKE_TOKEN})
    assert dry.returncode == 0 and "token: configured" in dry.stdout
    failed = run_cli_env("push", str(run.out), env={"HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "0",
                                                    "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert failed.returncode == 2
    for text in (run.result.stdout, run.result.stderr, dry.stdout, dry.stderr, failed.stdout, failed.stderr):
        assert FAKE_TOKEN not in text
    needle = FAKE_TOKEN.encode()
    files = [p for p in run.out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"trainer_state.json", "training_args.bin", "recipe.json", "README.md"} <= names
    leaked = [str(p) for p in files if needle in p.read_bytes()]
    assert leaked == []
