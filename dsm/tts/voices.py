"""TTS voices: speaker embeddings stored as `.safetensors` files (model-spec §5.4).

A voice file holds one float32 tensor `speaker_wavs` [1, 512, T]: the unquantized 12.5 Hz Mimi latent of
a 10 s clip (T = 125). Voices are named as in Kyutai's `kyutai/tts-voices` repo, by the path of the
source clip, e.g. `expresso/ex03-ex01_happy_001_channel1_334s.wav`; the embedding for a given model is
that path plus the model's suffix `.{sig}@{epoch}.safetensors` (`.1e68beda@240.safetensors` for
TTS-1.6b). A voice may also be a local `.safetensors` path, or `hf://owner/repo/path` in another repo.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dsm.codec import Mimi
from dsm.errors import CheckpointError, InputError
from dsm.hub import hf_file, resolve_reference

DEFAULT_VOICE_REPO = "kyutai/tts-voices"
VOICE_KEY = "speaker_wavs"
MAX_LISTED = 40  # voices named in an "unknown voice" message


def voice_suffix(raw_config: dict) -> str:
    """`.{sig}@{epoch}.safetensors` from a TTS config's `model_id` ("" when it has none)."""
    model_id = raw_config.get("model_id")
    if not isinstance(model_id, dict) or "sig" not in model_id or "epoch" not in model_id:
        return ""
    return f".{model_id['sig']}@{model_id['epoch']}.safetensors"


def resolve_voice(voice: str | os.PathLike, repo: str = DEFAULT_VOICE_REPO, suffix: str = "") -> Path:
    """Local path of a voice embedding: an existing `.safetensors` path, `hf://owner/repo/file`, or a
    name (the suffix is appended unless the name already ends in `.safetensors`) found as a local file,
    else in `repo`.

    An unknown name raises `InputError` listing the voices `repo` offers for this suffix."""
    text = str(voice)
    if not text.strip():
        raise InputError("empty voice name")
    path = Path(text).expanduser()
    if text.endswith(".safetensors") and path.is_file():
        return path
    if text.startswith("hf://") or text.startswith("file://"):
        return resolve_reference(text)
    name = text if text.endswith(".safetensors") else text + (suffix or ".safetensors")
    local = Path(name).expanduser()
    if local.is_file():  # as the reference: a local file of that name comes first
        return local
    if path.is_absolute() or text.startswith((".", "~")):
        raise InputError(f"{text}: voice file not found")
    try:
        return hf_file(repo, name)
    except CheckpointError as e:
        if "not found in hub repo" not in str(e) and "no such file in local model directory" not in str(e):
            raise
    raise InputError(unknown_voice_message(text, repo, suffix))


def unknown_voice_message(voice: str, repo: str, suffix: str) -> str:
    try:
        voices, where = available_voices(repo, suffix)
    except CheckpointError as e:
        return f"unknown voice {voice!r} in {repo} (its voices could not be listed: {e})"
    if not voices:
        return f"unknown voice {voice!r}: {where} holds no voices for this model (files ending in {suffix!r})"
    shown = "\n  ".join(voices[:MAX_LISTED])
    more = f"\n  ... and {len(voices) - MAX_LISTED} more" if len(voices) > MAX_LISTED else ""
    return f"unknown voice {voice!r}; available voices in {where}:\n  {shown}{more}"


def available_voices(repo: str = DEFAULT_VOICE_REPO, suffix: str = "") -> tuple[list[str], str]:
    """(Sorted voice names, where they were found) for a local directory or a hub repo (listed online,
    or from the local cache when offline: then only cached voices appear). Names drop `suffix`."""
    suffix = end = suffix or ".safetensors"  # a model without a `model_id`: plain NAME.safetensors files
    local = Path(repo).expanduser()
    if local.is_dir():
        files = [p.relative_to(local).as_posix() for p in local.rglob(f"*{end}") if p.is_file()]
        return _names(files, suffix), str(local)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline:
        try:
            from huggingface_hub import HfApi

            return _names([f for f in HfApi().list_repo_files(repo) if f.endswith(end)], suffix), repo
        except Exception:  # noqa: BLE001 - no network or no such repo: fall back to the cache
            pass
    try:
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(repo, local_files_only=True))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{repo} is neither reachable nor in the local Hugging Face cache") from e
    files = [p.relative_to(root).as_posix() for p in root.rglob(f"*{end}")]
    return _names(files, suffix), f"{repo} (local cache)"


def _names(files: list[str], suffix: str) -> list[str]:
    return sorted(f[: len(f) - len(suffix)] if suffix else f for f in files)


def load_voice(path: str | os.PathLike, dim: int = 512) -> torch.Tensor:
    """The speaker embedding of a voice file as float32 [T, dim] (the file stores [1, dim, T])."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: a voice must be a .safetensors embedding file")
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: voice file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors voice file ({e})") from e
    if VOICE_KEY not in tensors:
        raise InputError(f"{path}: no {VOICE_KEY!r} tensor in the voice file (found {sorted(tensors)})")
    emb = tensors[VOICE_KEY]
    if emb.dim() != 3 or emb.shape[0] != 1 or emb.shape[1] != dim or emb.shape[2] == 0:
        raise InputError(f"{path}: {VOICE_KEY!r} must have shape [1, {dim}, T], got {list(emb.shape)}")
    if not emb.is_floating_point() or not torch.isfinite(emb).all():
        raise InputError(f"{path}: {VOICE_KEY!r} must hold finite floating point values")
    return emb[0].t().float().contiguous()


def speaker_condition(voices: list[torch.Tensor], max_speakers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Voice embeddings ([T_i, dim] each) -> the `speaker_wavs` condition ([1, max_speakers * T, dim],
    mask [1, max_speakers * T]): slot i holds voice i, empty slots are zeros with a False mask. Shorter
    voices are zero-padded (mask False) to the longest."""
    if not voices:
        raise InputError("no voice given")
    if len(voices) > max_speakers:
        raise InputError(f"this model takes at most {max_speakers} voices, got {len(voices)}")
    length = max(v.shape[0] for v in voices)
    dim = voices[0].shape[1]
    tensor = torch.zeros(1, max_speakers, length, dim)
    mask = torch.zeros(1, max_speakers, length, dtype=torch.bool)
    for i, voice in enumerate(voices):
        tensor[0, i, : voice.shape[0]] = voice
        mask[0, i, : voice.shape[0]] = True
    return tensor.view(1, -1, dim), mask.view(1, -1)


def voice_from_audio(mimi: Mimi, wav: torch.Tensor, seconds: float) -> torch.Tensor:
    """A voice for models conditioned on the codec latent (dsm's TTS recipe, e.g. the bundled model): the
    unquantized latent of the clip's first ``seconds`` (zero-padded when shorter), [1, dim, T] float32.

    Kyutai's TTS-1.6b voices come from an unreleased speaker encoder instead; this does not make those."""
    if seconds <= 0:
        raise InputError(f"voice seconds must be positive, got {seconds}")
    wav = torch.as_tensor(wav, dtype=torch.float32).reshape(-1)
    if wav.numel() == 0:
        raise InputError("the voice clip is empty")
    length = max(1, round(seconds * mimi.frame_rate)) * mimi.frame_size
    wav = torch.nn.functional.pad(wav[:length], (0, max(0, length - wav.numel())))
    device = next(mimi.parameters()).device
    with torch.no_grad():
        return mimi.encode_to_latent(wav.view(1, 1, -1).to(device)).float().cpu()


def save_voice(path: str | os.PathLike, embedding: torch.Tensor) -> Path:
    """Write a voice file (`speaker_wavs` [1, dim, T] float32), as Kyutai's voice repos store them."""
    from safetensors.torch import save_file

    if embedding.dim() != 3 or embedding.shape[0] != 1:
        raise InputError(f"a voice embedding is [1, dim, T], got {list(embedding.shape)}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: a voice file must end in .safetensors")
    save_file({VOICE_KEY: embedding.float().contiguous().cpu()}, str(path))
    return path
