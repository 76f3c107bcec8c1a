"""What the STT and TTS trainers share: loading or creating the LM, its tokenizer and Mimi, LoRA, the
train module (teacher-forced forward + weighted losses), data setup, evaluation and export."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from dsm.codec import Mimi, MimiConfig, load_mimi
from dsm.errors import CheckpointError, InputError
from dsm.hub import resolve_reference
from dsm.lm import LMConfig, LMModel, build_lm, load_lm
from dsm.nn.transformer import Attention
from dsm.stt.checkpoint import SttCheckpoint, load_tokenizer
from dsm.train.codes_cache import CodesCache
from dsm.train.config import TrainConfig
from dsm.train.dataset import BatchOrder, LMItem, attach_codes, eval_batches, load_items
from dsm.train.export import export_lm
from dsm.train.loop import DistInfo, TrainTask
from dsm.train.lora import apply_lora, has_lora
from dsm.train.streams import LMBatch, LMExample, collate, lm_loss

log = logging.getLogger("dsm.train")


class LMSetup:
    """The model being trained and the files it comes with."""

    def __init__(
        self,
        lm: LMModel,
        raw_config: dict[str, Any],
        tokenizer: Any,
        tokenizer_path: Path,
        mimi: Mimi,
        mimi_path: Path,
    ):
        self.lm = lm
        self.raw_config = raw_config
        self.tokenizer = tokenizer
        self.tokenizer_path = tokenizer_path
        self.mimi = mimi
        self.mimi_path = mimi_path


def init_weights(lm: LMModel, std: float = 0.02) -> None:
    """GPT-style initialisation for a model trained from scratch: normal(0, std) matrices and
    embeddings, residual output projections scaled by 1/sqrt(2 * layers); norms stay at one."""
    layers = max(1, lm.cfg.num_layers)
    with torch.no_grad():
        for name, module in lm.named_modules():
            if name.startswith("condition_provider"):
                continue
            if isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
            elif isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(2 * layers) if name.endswith(("out_proj", "linear_out")) else 1.0
                module.weight.normal_(0.0, std * scale)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, Attention):
                module.in_proj_weight.normal_(0.0, std)


def init_from_codec(lm: LMModel, mimi: Mimi, std: float = 0.02) -> None:
    """Start the LM's audio code embeddings from the codec's code vectors (`SplitResidualVQ.code_vectors`):
    a frame's summed input embedding is then the codec's latent of it (through a fixed random projection
    when the widths differ), scaled to the overall size of `init_weights`' random embeddings."""
    with torch.no_grad():
        vectors = mimi.quantizer.code_vectors()[: lm.cfg.n_q].float()  # [n_q, bins, latent]
        if vectors.shape[1] != lm.cfg.card:
            raise InputError(f"the LM has {lm.cfg.card} codes per codebook but the Mimi {vectors.shape[1]}")
        latent = vectors.shape[-1]
        if latent != lm.cfg.dim:
            generator = torch.Generator().manual_seed(0)
            projection = torch.randn(latent, lm.cfg.dim, generator=generator) / math.sqrt(latent)
            vectors = vectors @ projection.to(vectors.device)
        summed_rms = vectors.pow(2).mean(dim=(1, 2)).sum().sqrt()  # of a sum of independent codes
        vectors = vectors * (std * math.sqrt(lm.cfg.n_q) / summed_rms)
        for embedding, table in zip(lm.emb, vectors, strict=True):
            embedding.weight[: lm.cfg.card] = table.to(embedding.weight.dtype)


def load_setup(cfg: TrainConfig, device: torch.device) -> LMSetup:
    """Fine-tune: resolve a Kyutai-format checkpoint (hub repo / directory / files) and load it in float32.
    From scratch: build ``[model.arch]`` (Kyutai config.json keys) with `init_weights`."""
    m = cfg.model

    def ref(value: str) -> str | Path | None:
        """A file named in the config: hf://owner/repo/file as is, else a path from the config's directory."""
        if not value:
            return None
        return value if value.startswith("hf://") else cfg.path(value)

    opt = {
        "moshi_weight": ref(m.moshi_weight),
        "mimi_weight": ref(m.mimi_weight),
        "tokenizer": ref(m.tokenizer),
        "config_path": ref(m.config_path),
    }
    init = m.init
    init_mimi_cfg = None  # the codec architecture a fine-tuned checkpoint's config names (dsm extension)
    if init and not init.startswith("hf://") and cfg.path(init).exists():
        init = str(cfg.path(init))
    if init or opt["moshi_weight"]:
        ckpt = SttCheckpoint.resolve(init or None, **opt)
        raw = copy.deepcopy(ckpt.raw_config)
        raw.update(copy.deepcopy(m.arch))  # allowed: e.g. context; shapes must still match the weights
        lm = load_lm(ckpt.moshi_weight, LMConfig.from_kyutai(raw), device=device, dtype=torch.float32)
        tok_path, mimi_path, init_mimi_cfg = ckpt.tokenizer, ckpt.mimi_weight, ckpt.mimi_config
        log.info("fine-tuning %s", ckpt.moshi_weight)
    else:
        if opt["config_path"] is not None:
            import json

            raw = json.loads(resolve_reference(opt["config_path"]).read_text())
            raw.update(copy.deepcopy(m.arch))
        else:
            raw = copy.deepcopy(m.arch)
        if opt["tokenizer"] is None or opt["mimi_weight"] is None:
            raise InputError(
                f"{cfg.source}: a model trained from scratch needs [model] tokenizer and mimi_weight"
            )
        try:
            lm_cfg = LMConfig.from_kyutai(raw)
        except CheckpointError as e:
            raise InputError(f"{cfg.source}: [model.arch]: {e}") from e
        lm = build_lm(lm_cfg, device=device, dtype=torch.float32)
        init_weights(lm)
        tok_path, mimi_path = resolve_reference(opt["tokenizer"]), resolve_reference(opt["mimi_weight"])
    tokenizer = load_tokenizer(tok_path)
    if tokenizer.vocab_size() > lm.cfg.text_card:
        raise InputError(
            f"{tok_path}: the tokenizer has {tokenizer.vocab_size()} pieces but the model's text_card is "
            f"{lm.cfg.text_card}"
        )
    mimi_cfg = MimiConfig.from_dict(m.mimi_config) if m.mimi_config else init_mimi_cfg
    mimi = load_mimi(mimi_path, config=mimi_cfg, device=device)  # all codebooks: one codes cache entry
    if lm.cfg.n_q > mimi.total_codebooks:
        raise InputError(f"the LM reads {lm.cfg.n_q} codebooks but the Mimi has {mimi.total_codebooks}")
    if m.codec_embeddings:
        if init or opt["moshi_weight"]:
            raise InputError(f"{cfg.source}: [model].codec_embeddings is for models trained from scratch")
        init_from_codec(lm, mimi)
    lm.train()
    lm.requires_grad_(True)
    return LMSetup(lm, raw, tokenizer, Path(tok_path), mimi, Path(mimi_path))


class LMTrainModule(nn.Module):
    """forward(batch) -> (total loss, metrics): the teacher-forced LM forward and the weighted losses.
    TTS batches carry their conditioning attributes in ``batch.extra["attributes"]``."""

    def __init__(self, lm: LMModel, first_codebook_weight: float = 1.0):
        super().__init__()
        self.lm = lm
        self.first_codebook_weight = first_codebook_weight

    def conditions(self, batch: LMBatch) -> dict[str, torch.Tensor | None]:
        attrs = batch.extra.get("attributes")
        lm = self.lm
        if attrs is None or lm.condition_provider is None or lm.fuser is None:
            return {}
        conds = lm.condition_provider(attrs)
        return {"sum_condition": lm.fuser.get_sum(conds), "cross_src": lm.fuser.get_cross(conds)}

    def forward(self, batch: LMBatch):
        ctx = parametrize.cached() if has_lora(self.lm) else contextlib.nullcontext()
        with ctx:
            out = self.lm(batch.codes, **self.conditions(batch), inputs=batch.extra.get("inputs"))
        loss = lm_loss(out, batch, self.first_codebook_weight)
        metrics = {"text_loss": loss.text.detach()}
        if loss.audio is not None:
            metrics["audio_loss"] = loss.audio.detach()
        if not self.training:  # evaluation reads the logits too
            self.last_output = (out, loss)
        return loss.total, metrics


class LMTask(TrainTask):
    """Shared STT/TTS task: subclasses set the streams (`example`) and the export settings."""

    kind = "lm"
    first_codebook_weight = 1.0

    def __init__(self, cfg: TrainConfig, info: DistInfo, setup: LMSetup | None = None):
        self.cfg = cfg
        self.info = info
        self.device = info.device
        self.setup = setup or load_setup(cfg, info.device)
        self.lm = self.setup.lm
        self.check_model()
        self.configure()
        lora = cfg.lora
        if lora.enabled:
            names = apply_lora(self.lm, lora.rank, lora.scaling, lora.targets, lora.train_also)
            log.info("LoRA rank %d on %d weights", lora.rank, len(names))
        self.freeze_unused()
        self.module = LMTrainModule(self.lm, self.first_codebook_weight)
        trainable = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.module.parameters())
        log.info("%s: %d trainable parameters of %d", self.kind, trainable, total)
        self.load_data()
        self.order = BatchOrder(
            len(self.train_items), cfg.optim.batch_size, cfg.run.seed, info.rank, info.world
        )

    # -- hooks for subclasses -----------------------------------------------------------------------------
    def check_model(self) -> None:
        """Reject a model this trainer cannot train."""

    def configure(self) -> None:
        """Read the stream settings."""

    def freeze_unused(self) -> None:
        """Freeze parameters that get no gradient (heads without targets)."""
        for head in self.lm.extra_heads:
            head.requires_grad_(False)

    def silence_frames(self) -> int:
        return 0

    def example(self, item: LMItem) -> LMExample:
        raise NotImplementedError

    def export_updates(self) -> dict[str, Any]:
        return {}

    # -- data ---------------------------------------------------------------------------------------------
    def load_data(self) -> None:
        cfg, data = self.cfg, self.cfg.data
        encode = self.setup.tokenizer.encode
        cache_dir = cfg.path(data.cache_dir) if data.cache_dir else cfg.out_dir / "codes_cache"
        self.cache = CodesCache(cache_dir, self.setup.mimi, self.device)
        train_manifest = cfg.path(data.train)
        exclude = data.eval_split if not data.eval else ""
        self.train_items = load_items(
            train_manifest,
            encode,
            split=data.train_split,
            exclude_split=exclude,
            max_seconds=data.max_seconds,
        )
        if data.eval:
            self.eval_items = load_items(
                cfg.path(data.eval),
                encode,
                split=data.eval_split,
                max_seconds=data.max_seconds,
                max_items=data.max_eval_items,
            )
        elif data.eval_split:
            self.eval_items = load_items(
                train_manifest,
                encode,
                split=data.eval_split,
                max_seconds=data.max_seconds,
                max_items=data.max_eval_items,
            )
        else:
            self.eval_items = []
        n_q = self.codes_n_q()
        progress = cfg.run.progress and self.info.is_main
        attach_codes(self.train_items + self.eval_items, self.cache, n_q, self.silence_frames(), progress)
        log.info(
            "data: %d training items, %d held out (codes cache: %d hits, %d computed)",
            len(self.train_items),
            len(self.eval_items),
            self.cache.hits,
            self.cache.misses,
        )

    def codes_n_q(self) -> int:
        return self.lm.cfg.n_q

    def make_batch(self, items: list[LMItem], train: bool) -> LMBatch:
        """Collated examples of `items` on the task's device (subclasses add training-time changes)."""
        del train
        return collate([self.example(item) for item in items]).to(self.device)

    def next_batch(self) -> LMBatch:
        return self.make_batch([self.train_items[i] for i in self.order.next()], train=True)

    def evaluate(self, module: nn.Module, rank: int, world: int) -> dict[str, tuple[float, float]]:
        sums = {"loss": [0.0, 0.0], "text_loss": [0.0, 0.0], "word_acc": [0.0, 0.0]}
        for indices in eval_batches(len(self.eval_items), self.cfg.optim.batch_size, rank, world):
            batch = self.make_batch([self.eval_items[i] for i in indices], train=False)
            total, _ = module(batch)
            out, loss = _inner(module).last_output
            n = len(indices)
            sums["loss"][0] += float(total) * n
            sums["loss"][1] += n
            sums["text_loss"][0] += float(loss.text) * loss.text_weight
            sums["text_loss"][1] += loss.text_weight
            target = batch.text_target
            words = out.text_mask[:, 0] & (target > 3)
            pred = out.text_logits[:, 0].argmax(-1)
            sums["word_acc"][0] += float((pred[words] == target[words]).sum())
            sums["word_acc"][1] += float(words.sum())
            if loss.audio is not None:
                entry = sums.setdefault("audio_loss", [0.0, 0.0])
                entry[0] += float(loss.audio) * loss.audio_weight
                entry[1] += loss.audio_weight
        return {k: (v[0], v[1]) for k, v in sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])

    def export(self, out_dir: Path) -> None:
        dtype = torch.bfloat16 if self.cfg.model.export_dtype == "bfloat16" else torch.float32
        updates = self.export_updates()
        if self.setup.mimi.cfg != MimiConfig():  # not Kyutai's codec: loaders need its architecture
            updates["mimi_config"] = self.setup.mimi.cfg.to_dict()
        export_lm(
            self.lm,
            self.setup.raw_config,
            out_dir,
            tokenizer=self.setup.tokenizer_path,
            mimi_weight=self.setup.mimi_path,
            dtype=dtype,
            updates=updates,
            text_vocab=self.setup.tokenizer.vocab_size(),
        )
        log.info("exported the trained model to %s", out_dir)


def _inner(module: nn.Module) -> nn.Module:
    """The train module behind a DDP/FSDP wrapper."""
    return getattr(module, "module", module)
