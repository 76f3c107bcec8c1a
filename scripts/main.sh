#!/usr/bin/env bash
# Set up dsm and run its main job on an audio file: a codec round trip (encode to 12.5 Hz codes and
# decode back), offline with dsm's bundled codec, or with Kyutai's published Mimi when a flag names it.
#   bash scripts/main.sh IN.wav OUT.wav [--hf-repo kyutai/stt-1b-en_fr | --mimi-weight FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install torch==2.13.0
fi
"$PY" -m pip install -e .
IN=${1:?usage: scripts/main.sh IN OUT [model flags]}
OUT=${2:?usage: scripts/main.sh IN OUT [model flags]}
shift 2
dsm codec roundtrip "$IN" "$OUT" "$@"
