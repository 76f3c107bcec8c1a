"""Checkpoint file resolution: local repo directories, the Hugging Face cache, offline errors."""

from __future__ import annotations

import json

import pytest

from dsm.errors import CheckpointError
from dsm.hub import MIMI_FILENAMES, hf_file, mimi_file, resolve_reference

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding `kyutai/fake-stt` with a config and a Mimi file."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--kyutai--fake-stt"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    (snapshot / "config.json").write_text(json.dumps({"mimi_name": MIMI_FILENAMES[1]}))
    (snapshot / MIMI_FILENAMES[1]).write_bytes(b"weights")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_cached_repo_resolves_offline(hub_cache):
    path = mimi_file("kyutai/fake-stt")
    assert path.read_bytes() == b"weights"
    assert path.name == MIMI_FILENAMES[1]


def test_hf_reference_into_another_repo(hub_cache):
    path = resolve_reference(f"hf://kyutai/fake-stt/{MIMI_FILENAMES[1]}")
    assert path.read_bytes() == b"weights"


def test_missing_file_offline_says_how_to_get_it(hub_cache):
    with pytest.raises(CheckpointError) as err:
        hf_file("kyutai/fake-stt", "model.safetensors")
    message = str(err.value)
    assert "model.safetensors" in message and "HF_HUB_OFFLINE" in message and "hf download" in message


def test_uncached_repo_offline_fails_fast(hub_cache):
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        mimi_file("kyutai/not-cached")


def test_local_directory_repo(tmp_path):
    (tmp_path / MIMI_FILENAMES[0]).write_bytes(b"local")
    assert mimi_file(str(tmp_path)).read_bytes() == b"local"
    with pytest.raises(CheckpointError, match="no such file in local model directory"):
        hf_file(str(tmp_path), "config-missing.json")


def test_bare_names_come_from_the_repo_not_the_working_directory(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "weights.safetensors").write_bytes(b"repo")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"cwd")
    assert resolve_reference("weights.safetensors", str(repo)).read_bytes() == b"repo"
    assert resolve_reference("file://weights.safetensors", str(repo)).read_bytes() == b"cwd"
    assert resolve_reference(str(tmp_path / "weights.safetensors")).read_bytes() == b"cwd"


def test_malformed_references(tmp_path):
    with pytest.raises(CheckpointError, match="hf://owner/repo/path"):
        resolve_reference("hf://just-a-name")
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_reference(tmp_path / "absent.bin")
