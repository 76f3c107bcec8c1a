"""dsm's bundled offline English models (model cards: docs/models.md).

Small models trained with dsm's own recipes (`scripts/train_bundled.sh`) ship inside the package, under
``dsm/models/``, each laid out like a Kyutai hub repo: ``codec/`` (``mimi.safetensors`` +
``mimi_config.json``), ``stt/`` and ``tts/`` (``config.json``, ``model.safetensors``, ``tokenizer.model``;
their configs name the shared codec as ``../codec/mimi.safetensors``) and ``tts/voices/``. They are what
`dsm stt`, `dsm tts`, `dsm codec`, the example server config and the Python API use when no model is
named; Kyutai's published models stay one ``--hf-repo`` away.
"""

from __future__ import annotations

from pathlib import Path

from dsm.errors import CheckpointError

ROOT = Path(__file__).resolve().parent / "models"

# The files of each bundled model, and the published model to name instead.
_FILES = {
    "codec": (("mimi.safetensors", "mimi_config.json"), "kyutai/stt-1b-en_fr"),
    "stt": (("config.json", "model.safetensors", "tokenizer.model"), "kyutai/stt-1b-en_fr"),
    "tts": (("config.json", "model.safetensors", "tokenizer.model"), "kyutai/tts-1.6b-en_fr"),
}


def bundled(kind: str) -> Path:
    """The directory of the bundled ``kind`` model ("codec", "stt" or "tts"), after checking that its
    files (and the shared codec's) are there; a `CheckpointError` names what is missing."""
    names, published = _FILES[kind]
    directory = ROOT / kind
    missing = [str(directory / n) for n in names if not (directory / n).is_file()]
    if kind != "codec":
        missing += [str(ROOT / "codec" / n) for n in _FILES["codec"][0] if not (ROOT / "codec" / n).is_file()]
    if missing:
        raise CheckpointError(
            f"dsm's bundled {kind} model is not installed (missing {', '.join(missing)}): reinstall dsm, "
            f"or name a model, e.g. --hf-repo {published}"
        )
    return directory
