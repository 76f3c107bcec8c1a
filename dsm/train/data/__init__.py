"""Aligned speech data for training: the manifest format, offline speech generators (espeak-ng, Piper)
with word times, augmentation, text sources, held-out splits and importers of common corpus layouts.

The manifest (`manifest.jsonl`) holds one utterance per line: audio path, transcript, word timings,
speaker; see `dsm.train.data.manifest`.
"""

from dsm.train.data.manifest import Utterance, WordTiming, read_manifest, write_manifest

__all__ = ["Utterance", "WordTiming", "read_manifest", "write_manifest"]
