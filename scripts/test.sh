#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
#   bash scripts/test.sh [pytest args...]
# Installs: torch (CPU build when none is present), dsm with its test, piper and distill extras, and the reference
# implementation (Kyutai's `moshi` 0.2.13) used as the test oracle. moshi pins old versions of torch,
# numpy and huggingface-hub, so it is installed without its dependencies next to a modern stack.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install torch==2.13.0
fi
"$PY" -m pip install -e ".[test,piper,distill]"
# espeak-ng, flite and festival with three English voices (Debian) speak the aligned data of
# tests/test_train_data.py
if ! "$PY" -c "import ctypes; ctypes.CDLL('libespeak-ng.so.1'); ctypes.CDLL('libflite_cmu_us_rms.so.1')" \
    2>/dev/null || ! [ -d /usr/share/festival/voices/english/kal_diphone ] ||
    ! [ -d /usr/share/festival/voices/english/ked_diphone ] ||
    ! [ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends espeak-ng flite festival \
        festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k
fi
"$PY" -m pip install --no-deps moshi==0.2.13
"$PY" -m pip install einops sentencepiece "huggingface-hub<1.0" "numpy<2.3"

export DSM_REQUIRE_ORACLE=1   # a missing oracle fails the parity tests instead of skipping them
export NO_TORCH_COMPILE=1 NO_CUDA_GRAPH=1
"$PY" -m ruff check dsm tests benchmarks
"$PY" -m pytest "$@"
