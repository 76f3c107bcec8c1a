"""Finding checkpoint files: local paths, `hf://owner/repo/file` references and Hugging Face repos.

Hub look-ups go through `huggingface_hub`, so the local cache and `HF_HUB_OFFLINE=1` are honoured;
a file that is neither cached nor downloadable gives a `CheckpointError` that says how to get it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dsm.errors import CheckpointError

# Mimi's published weights, under the names Kyutai's repos use (TTS/moshi repos, then STT repos).
MIMI_FILENAMES = ("tokenizer-e351c8d8-checkpoint125.safetensors", "mimi-pytorch-e351c8d8@125.safetensors")


def hf_file(repo: str, filename: str, revision: str | None = None) -> Path:
    """Path of `filename` from hub repo `repo` (a local directory laid out like a repo also works)."""
    local = Path(repo)
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file in local model directory {local}")
        return path
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise CheckpointError("huggingface_hub is required to load models by repo id") from e
    try:
        # The cache first: no network round trip (and no retries when offline) for cached files.
        return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, EntryNotFoundError, OSError):
        pass
    except HFValidationError as e:
        raise CheckpointError(f"{repo}: not a local directory nor a valid hub repo id ({e})") from e
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except LocalEntryNotFoundError as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise CheckpointError(
            f"{filename} from {repo} is not in the local Hugging Face cache and {why}. Download it on a "
            f"machine with network (`hf download {repo} {filename}`) and copy the cache, or pass the file "
            "path directly."
        ) from e
    except EntryNotFoundError as e:
        raise CheckpointError(f"{filename}: not found in hub repo {repo}") from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(
            f"{repo}: no such hub repository (or it is private; try `hf auth login`)"
        ) from e
    except HFValidationError as e:
        raise CheckpointError(f"{repo}: not a local directory nor a valid hub repo id ({e})") from e
    except OSError as e:
        raise CheckpointError(f"{filename} from {repo}: {e}") from e


def resolve_reference(ref: str | Path, repo: str | None = None) -> Path:
    """Resolve a file reference as Kyutai's configs write them.

    `hf://owner/repo/path` names a file in another hub repo, `file://path` or an existing path is
    local, and a bare name is looked up in `repo`.
    """
    text = str(ref)
    if text.startswith("hf://"):
        parts = text[len("hf://") :].split("/")
        if len(parts) < 3:
            raise CheckpointError(f"{text}: expected hf://owner/repo/path/to/file")
        return hf_file("/".join(parts[:2]), "/".join(parts[2:]))
    explicit_local = text.startswith("file://")
    if explicit_local:
        text = text[len("file://") :]
    path = Path(text).expanduser()
    bare_name = repo is not None and not explicit_local and not path.is_absolute() and len(path.parts) == 1
    if bare_name:  # as in Kyutai's configs: a bare name lives in the repo, not the working directory
        return hf_file(repo, text)
    if path.is_file():
        return path
    if repo is not None and not explicit_local and not path.is_absolute():
        return hf_file(repo, text)
    raise CheckpointError(f"{text}: no such file")


def repo_config(repo: str) -> dict:
    """The repo's `config.json` as a dict ({} if the repo has none)."""
    try:
        path = hf_file(repo, "config.json")
    except CheckpointError as e:
        if "not found in hub repo" in str(e) or "no such file in local model directory" in str(e):
            return {}
        raise
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid JSON config ({e})") from e


def mimi_file(repo: str) -> Path:
    """Mimi weights of a Kyutai repo: `mimi_name` from its config.json, else the published names."""
    name = repo_config(repo).get("mimi_name")
    return first_found([name] if name else list(MIMI_FILENAMES), repo)


def first_found(names: list[str], repo: str) -> Path:
    """The first of `names` that resolves in `repo` (the last name's error if none does)."""
    if not names:
        raise ValueError("no file names to look for")
    for name in names[:-1]:
        try:
            return resolve_reference(name, repo)
        except CheckpointError:
            continue
    return resolve_reference(names[-1], repo)
