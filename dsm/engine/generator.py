"""Batched streaming generation with a DSM model over B independent slots.

Each call to `LMGen.step` advances every active slot by one 80 ms frame: it writes the slot's input
tokens (e.g. the Mimi codes of its audio) into a small per-slot cache at their stream delays, runs one
temporal-transformer step for the whole batch, samples the text token (and, through the depformer,
the audio codebooks), and returns the newest *un-delayed* frame of each slot. The delay bookkeeping
follows the reference generator (model-spec §3.3): initial tokens until a stream's delay has passed,
a token cache of `max_delay + 2` columns, the user input of a slot's first step never reaching the
model, outputs of -2 until `max_delay` steps have been produced.

Slots are independent: `reset(slots)` restarts some without touching the others, and an `active`
mask leaves inactive slots exactly as they were (their outputs are -2). Memory is fixed at
construction: KV rings of `context` steps per slot, written in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dsm.engine.depformer import FastDepformer, supports_fast_depformer
from dsm.errors import InputError
from dsm.lm.model import UNGENERATED_TOKEN, ZERO_TOKEN, LMModel
from dsm.nn.quant import WeightOnlyLinear
from dsm.nn.sampling import sample, sample_per_slot


@dataclass
class StepOutput:
    """One generation step for B slots."""

    tokens: torch.Tensor  # [B, 1 + dep_q] un-delayed text + audio frame; -2 where not ready/inactive
    ready: torch.Tensor  # [B] bool, slots whose `tokens` are valid this step
    text: torch.Tensor  # [B] the text token sampled this step (before un-delaying), -2 if inactive
    hidden: torch.Tensor  # [B, dim] temporal transformer output (after out_norm)
    extra_heads: list[torch.Tensor]  # per extra head, [B, extra_heads_dim] probabilities


def quantized_products(model: LMModel, quantize: str | None, exact: bool) -> WeightOnlyLinear | None:
    """The quantized products of `model` for `quantize` (one of `dsm.nn.quant.KINDS`, or None), made (and its
    weights quantized) on the first call; InputError for an unknown kind, a non-CPU model, or `exact`."""
    if quantize is None:
        return None
    if exact:
        raise InputError("quantized weights cannot reproduce the reference: drop exact or quantize")
    return model.quantized_linear(quantize)


class LMGen:
    """Streaming generator over `batch_size` slots (see the module docstring).

    Sampling: temperatures <= 0 are greedy. With `seeds`, slot b draws from its own generator (its
    tokens do not depend on the other slots); without, draws come from `generator` (default: torch's
    default generator) in the reference's order, so a seeded reference run is reproduced token for token.
    Classifier-free guidance (`cfg_coef != 1`) runs a null-conditioned copy of each slot: pass
    `condition_sum` / `condition_cross` with 2B rows (conditional first, null second), or use
    `cfg_is_no_text` to build the null copy by masking text. `attention_dtype` (e.g. float32 for a
    bf16 model on CPU, see `dsm.nn.transformer.cpu_attention_dtype`) holds keys/values and runs
    attention in another dtype than the model's (not exact then). `quantize` (one of
    `dsm.nn.quant.KINDS`, CPU) runs the products of the streaming step on converted weights
    (`dsm.nn.quant`; the model keeps its own weights, converted copies are shared by every generator
    of the model). Hooks: `on_text_logits(logits [B, V])` may edit the text logits in place before the
    text is sampled, `on_text(tokens [B])` may replace the sampled text, `on_audio(tokens [B, dep_q])` the
    audio; `on_audio_logits(codebook, logits [B, card])` sees each audio codebook's logits (CFG applied)
    before it is sampled.
    """

    def __init__(
        self,
        model: LMModel,
        batch_size: int,
        *,
        temp: float = 0.8,
        temp_text: float = 0.7,
        top_k: int = 250,
        top_k_text: int = 25,
        cfg_coef: float = 1.0,
        cfg_is_no_text: bool = False,
        cfg_is_masked_until: Sequence[int] | None = None,
        condition_sum: torch.Tensor | None = None,
        condition_cross: torch.Tensor | None = None,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        dep_q: int | None = None,
        exact: bool = False,
        attention_dtype: torch.dtype | None = None,
        quantize: str | None = None,
        on_text_logits: Callable[[torch.Tensor], None] | None = None,
        on_text: Callable[[torch.Tensor], None] | None = None,
        on_audio: Callable[[torch.Tensor], None] | None = None,
        on_audio_logits: Callable[[int, torch.Tensor], None] | None = None,
    ):
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        cfg = model.cfg
        self.model = model
        self.batch_size = batch_size
        self.temp, self.temp_text, self.top_k, self.top_k_text = temp, temp_text, top_k, top_k_text
        self.cfg_coef = cfg_coef
        self.cfg_is_no_text = cfg_is_no_text
        self.dep_q = cfg.dep_q if dep_q is None else dep_q
        if not 0 <= self.dep_q <= cfg.dep_q:
            raise InputError(f"dep_q must be between 0 and {cfg.dep_q}, got {dep_q}")
        self.on_text_logits, self.on_text, self.on_audio = on_text_logits, on_text, on_audio
        self.on_audio_logits = on_audio_logits
        device = model.device
        self.device = device
        self.delays = torch.tensor(cfg.delays, dtype=torch.long, device=device)
        self.max_delay = cfg.max_delay
        shape = (batch_size, cfg.num_codebooks, self.max_delay + 2)
        self.cache = torch.full(shape, UNGENERATED_TOKEN, dtype=torch.long, device=device)
        self.offsets = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.initial = model.initial_tokens()
        self.cfg_is_masked_until = (
            None
            if cfg_is_masked_until is None
            else torch.tensor(list(cfg_is_masked_until), dtype=torch.long, device=device)
        )
        rows = 2 * batch_size if self.uses_cfg else batch_size
        for name, cond in (("condition_sum", condition_sum), ("condition_cross", condition_cross)):
            if cond is not None and cond.shape[0] != rows:
                raise InputError(f"{name} must have {rows} rows (2 per slot under CFG), got {cond.shape[0]}")
        self.condition_sum = None if condition_sum is None else condition_sum.to(model.dtype)
        self.condition_cross = None if condition_cross is None else condition_cross.to(model.dtype)
        linear = quantized_products(model, quantize, exact)
        self.state = model.transformer.init_state(rows, fast=not exact, attention_dtype=attention_dtype)
        self.state.linear = linear
        self.depformer_state = model.depformer.init_state(rows, fast=not exact) if model.depformer else None
        self.fast_depformer = None
        if self.dep_q > 0 and supports_fast_depformer(model):
            self.fast_depformer = FastDepformer(model, rows, self.dep_q, exact, attention_dtype, linear)
        self.generators = None
        self.generator = generator
        if seeds is not None and generator is not None:
            raise InputError("pass either per-slot seeds or one shared generator, not both")
        if seeds is not None:
            if len(seeds) != batch_size:
                raise InputError(f"expected {batch_size} seeds, got {len(seeds)}")
            self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_coef != 1.0

    @property
    def needed_inputs(self) -> int:
        """Number of input token rows per step: K - 1 - dep_q (the user's audio codebooks; with a
        lowered `dep_q`, also the codebooks no longer generated, e.g. fed as -1 by TTS)."""
        return self.model.cfg.num_codebooks - 1 - self.dep_q

    # -- slot management -------------------------------------------------------------------------
    def _mask(self, slots) -> torch.Tensor:
        if slots is None:
            return torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        if isinstance(slots, torch.Tensor) and slots.dtype == torch.bool:
            if slots.shape != (self.batch_size,):
                raise InputError(f"slot mask must have shape [{self.batch_size}], got {list(slots.shape)}")
            return slots.to(self.device)
        mask = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        for i in slots:
            if not 0 <= int(i) < self.batch_size:
                raise InputError(f"slot {int(i)} out of range for {self.batch_size} slots")
            mask[int(i)] = True
        return mask

    @torch.inference_mode()
    def reset(self, slots=None, seeds: Sequence[int] | None = None) -> None:
        """Restart the given slots (indices, a bool mask, or None for all); optionally reseed them."""
        mask = self._mask(slots)
        self.offsets.masked_fill_(mask, 0)
        self.cache.masked_fill_(mask[:, None, None], UNGENERATED_TOKEN)
        self.state.reset(mask.repeat(2) if self.uses_cfg else mask)
        if seeds is not None and self.generators is not None:
            for slot, seed in zip(torch.nonzero(mask).flatten().tolist(), seeds, strict=True):
                self.generators[slot].manual_seed(int(seed))

    @torch.inference_mode()
    def set_conditions(self, slots, condition_sum=None, condition_cross=None) -> None:
        """Replace the conditioning of some slots (e.g. a new voice when a TTS slot is reused)."""
        index = torch.nonzero(self._mask(slots)).flatten()
        if self.uses_cfg:
            index = torch.cat([index, index + self.batch_size])
        if condition_sum is not None:
            self.condition_sum[index] = condition_sum.to(self.condition_sum)
        if condition_cross is not None:
            self.condition_cross[index] = condition_cross.to(self.condition_cross)
            self.state.cross = None  # recomputed from condition_cross on the next step

    # -- one step --------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, temp: float, top_k: int) -> torch.Tensor:
        if self.generators is None:
            return sample(logits, temp, top_k, self.generator)
        return sample_per_slot(logits, temp, top_k, self.generators)

    @torch.inference_mode()
    def step(
        self,
        inputs: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
        audio_override: torch.Tensor | None = None,
        depformer_codebooks: int | None = None,
    ) -> StepOutput:
        """Advance every active slot by one frame.

        inputs: [B, needed_inputs] (or [B, needed_inputs, 1]) tokens of the input streams.
        active: [B] bool (default all). audio_override: [B, dep_q] tokens used instead of the
        depformer's (e.g. TTS before its audio delay). depformer_codebooks: sample only the first n
        codebooks, the others are ZERO_TOKEN (e.g. TTS codebooks still inside their acoustic delay, whose
        tokens are discarded; not in exact mode, where the reference samples every codebook).
        """
        cfg = self.model.cfg
        B = self.batch_size
        CT = self.cache.shape[2]
        exec_mask = self._mask(active)
        needed = self.needed_inputs
        if needed:
            if inputs is None:
                raise InputError(f"this model reads {needed} input streams: pass inputs [B, {needed}]")
            inputs = inputs.to(self.device)
            if inputs.dim() == 3:
                inputs = inputs[..., 0]
            if inputs.dim() != 2 or inputs.shape[0] != B or inputs.shape[1] < needed:
                raise InputError(f"inputs must have shape [{B}, {needed}], got {list(inputs.shape)}")
            inputs = inputs[:, :needed]
            first = self.dep_q + 1
            self._write(first, inputs, (self.offsets[:, None] + self.delays[first:]) % CT, exec_mask)

        is_init = (self.offsets[:, None] <= self.delays) | ~exec_mask[:, None]  # [B, K]
        column = (self.offsets % CT)[:, None, None].expand(B, cfg.num_codebooks, 1)
        tokens = torch.where(is_init, self.initial[:, :, 0], self.cache.gather(2, column)[..., 0])
        model_active = exec_mask
        if self.uses_cfg:
            null = tokens.clone()
            if self.cfg_is_masked_until is not None:
                limit = self.delays + self.cfg_is_masked_until[:, None]
                null = torch.where((self.offsets[:, None] <= limit) & ~is_init, ZERO_TOKEN, null)
            if self.cfg_is_no_text:
                null[:, 0] = torch.where(is_init[:, 0], null[:, 0], ZERO_TOKEN)
            tokens = torch.cat([tokens, null])
            model_active = exec_mask.repeat(2)

        hidden, text_logits = self.model.forward_text(
            tokens[..., None], self.state, model_active, self.condition_sum, self.condition_cross
        )
        text_logits = text_logits[:, 0, 0]  # [B', V]
        if self.uses_cfg:
            cond, null_logits = text_logits.chunk(2)
            text_logits = cond if self.cfg_is_no_text else null_logits + (cond - null_logits) * self.cfg_coef
        if self.on_text_logits is not None:
            self.on_text_logits(text_logits)
        text = self._sample(text_logits.float(), self.temp_text, self.top_k_text)
        if self.on_text is not None:
            self.on_text(text)

        audio = None
        if self.dep_q > 0:
            if audio_override is not None:
                audio = audio_override.to(self.device).reshape(B, self.dep_q)
            else:
                audio = self._depformer(text, hidden, depformer_codebooks)
            if self.on_audio is not None:
                self.on_audio(audio)

        self.offsets = torch.where(exec_mask, self.offsets + 1, self.offsets)
        out_col = (self.offsets % CT)[:, None]
        self._write(0, text[:, None], out_col, exec_mask)
        if audio is not None:
            self._write(1, audio, out_col.expand_as(audio), exec_mask)

        index = (self.offsets[:, None] - self.max_delay + self.delays[: 1 + self.dep_q]) % CT
        out = self.cache[:, : 1 + self.dep_q].gather(2, index[..., None])[..., 0]
        ready = (self.offsets > self.max_delay) & exec_mask
        out = torch.where(ready[:, None], out, UNGENERATED_TOKEN)
        hidden = hidden[:B, 0]
        extra = self.model.extra_head_probs(hidden)
        text = torch.where(exec_mask, text, UNGENERATED_TOKEN)
        return StepOutput(out, ready, text, hidden, extra)

    def _write(self, first_row: int, values: torch.Tensor, columns: torch.Tensor, mask: torch.Tensor) -> None:
        """cache[b, first_row + j, columns[b, j]] = values[b, j] for slots in `mask`."""
        rows = self.cache[:, first_row : first_row + values.shape[1]]
        index = columns[..., None]
        current = rows.gather(2, index)[..., 0]
        rows.scatter_(2, index, torch.where(mask[:, None], values, current)[..., None])

    def _depformer(self, text: torch.Tensor, hidden: torch.Tensor, codebooks: int | None) -> torch.Tensor:
        """Sample the dep_q audio codebooks of this step (or the first `codebooks`), one after the other."""
        if codebooks is not None and not 0 < codebooks <= self.dep_q:
            raise InputError(f"depformer_codebooks must be between 1 and {self.dep_q}, got {codebooks}")
        if self.fast_depformer is not None:
            first = text.repeat(2) if self.uses_cfg else text
            return self.fast_depformer(first, hidden, self._pick_audio, codebooks)
        model = self.model
        state = self.depformer_state
        state.reset(torch.ones_like(state.offset, dtype=torch.bool))
        previous = text
        tokens = []
        count = self.dep_q if codebooks is None else codebooks
        for c in range(count):
            prev = previous.repeat(2) if self.uses_cfg else previous
            x = model.depformer_input(c, hidden, prev[:, None])
            out = model.depformer(x, state)
            logits = model.depformer_logits(c, out)[:, 0]
            previous = self._pick_audio(c, logits)
            tokens.append(previous)
        out = torch.stack(tokens, dim=1)
        return torch.nn.functional.pad(out, (0, self.dep_q - count), value=ZERO_TOKEN)

    def _pick_audio(self, codebook: int, logits: torch.Tensor) -> torch.Tensor:
        """Audio tokens of one codebook from the depformer's logits (CFG applied)."""
        if self.uses_cfg:
            cond, null = logits.chunk(2)
            logits = null + (cond - null) * self.cfg_coef
        if self.on_audio_logits is not None:
            self.on_audio_logits(codebook, logits)
        return self._sample(logits.float(), self.temp, self.top_k)
