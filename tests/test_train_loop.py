"""The trainers end to end on tiny data: the loss falls, a killed run resumes to the same weights, and a
fine-tune (full and LoRA) of a Kyutai-format checkpoint exports a model that dsm's Transcriber loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lm_configs
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import (
    STT_ARCH,
    TINY_MIMI,
    codec_config_dict,
    make_assets,
    stt_config_dict,
    tiny_mimi_config,
    tts_config_dict,
)

from dsm.audio import read_audio
from dsm.cli import main
from dsm.codec import MimiConfig, load_mimi
from dsm.errors import InputError
from dsm.lm import load_lm
from dsm.stt.transcriber import Transcriber
from dsm.train.codes_cache import CodesCache
from dsm.train.config import load_config, parse_config
from dsm.train.run import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("train-assets"))


def cfg_of(raw, kind, tmp_path):
    return parse_config(raw, kind, tmp_path)


def losses(history, key="loss"):
    return [r[key] for r in history if key in r]


def test_stt_from_scratch_lowers_loss_and_exports(assets, tmp_path):
    raw = stt_config_dict(assets, tmp_path / "run", run={"max_steps": 30, "save_every": 15})
    result = train(cfg_of(raw, "stt", tmp_path))
    first, final_eval = losses(result.history)[0], losses(result.history, "eval_loss")[-1]
    assert final_eval < 0.5 * first, (first, final_eval)
    out = tmp_path / "run"
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.csv").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20, 25, 30]
    try:
        import matplotlib  # noqa: F401

        assert (out / "loss.png").stat().st_size > 1000
    except ImportError:
        assert not (out / "loss.png").exists()
    export = out / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["stt_config"] == {"audio_delay_seconds": 0.32, "audio_silence_prefix_seconds": 0.0}
    assert config["mimi_config"] == tiny_mimi_config().to_dict()  # the small codec's architecture...
    stt = Transcriber.from_checkpoint(export)  # ...so that loading needs no mimi_config
    result = stt.transcribe(assets["root"] / "data" / "clips" / "011.wav")
    assert len(result.tokens) == 25 + 4  # 2 s of audio and the 0.32 s delay
    vocab = assets["tok"].vocab_size()  # 120 pieces, text_card 128: the head keeps the tokenizer's rows
    assert config["text_card"] == 128 and config["text_card_out"] == vocab
    assert load_file(str(export / "model.safetensors"))["text_linear.weight"].shape[0] == vocab
    assert all(0 <= t < vocab for t in result.tokens)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("kind", ["tts", "codec", "stt"])
def test_resume_after_interruption_is_exact(assets, tmp_path, kind):
    """Kill after step 5 (last checkpoint at step 3), resume: the weights at step 8 equal an uninterrupted
    run's bit for bit. TTS exercises the voice draws and condition dropout, the codec its EMA codebooks,
    random crops, quantizer dropout and the discriminator, STT the code-noise draws."""
    make = {"tts": tts_config_dict, "codec": codec_config_dict, "stt": stt_config_dict}[kind]
    extra = {
        "tts": {},
        "codec": {"codec": {"adversarial_weight": 0.1, "segment_seconds": 0.24}},
        "stt": {"stt": {"code_noise": 0.3}},
    }[kind]
    run = {"max_steps": 8, "save_every": 3, "log_every": 1, "eval_every": 4}

    def config(name):
        raw = make(assets, tmp_path / name, run=dict(run), **copy.deepcopy(extra))
        return cfg_of(raw, kind, tmp_path)

    full = train(config("full"))
    killed = train(config("killed"), stop_after=5)
    assert killed.interrupted and killed.step == 5
    assert _state(tmp_path / "killed" / "checkpoint.pt")["step"] == 3
    resumed = train(config("killed"), resume=True)
    assert resumed.step == 8 and not resumed.interrupted
    a, b = _state(tmp_path / "full" / "checkpoint.pt"), _state(tmp_path / "killed" / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["extra"].keys() == b["extra"].keys()
    assert a["history"][-1]["step"] == 8
    after = [(r["step"], r.get("loss"), r.get("eval_loss")) for r in a["history"] if r["step"] > 3]
    assert after == [(r["step"], r.get("loss"), r.get("eval_loss")) for r in b["history"] if r["step"] > 3]
    if kind == "codec":
        exported = tmp_path / "killed" / "export" / "mimi.safetensors"
        mimi = load_mimi(exported, config=_codec_cfg(), num_codebooks=4)
        assert mimi.total_codebooks == 4
    first = losses(full.history)[0]
    assert losses(full.history)[-1] < first


def _codec_cfg():
    from dsm.codec import MimiConfig

    return MimiConfig.from_dict(copy.deepcopy(TINY_MIMI) | {"n_q": 4, "bins": 64})


@pytest.fixture(scope="module")
def published(assets, tmp_path_factory):
    """A Kyutai-format STT model directory made by the reference implementation (random weights): the real
    stt-1b-en_fr architecture at 1 layer, 64 wide, with the tiny tokenizer and Mimi."""
    oracle = pytest.importorskip("oracle")
    root = tmp_path_factory.mktemp("published")
    cfg = lm_configs.reduced(lm_configs.STT_1B, layers=1)
    cfg.update(dim=64, num_heads=2, text_card=assets["tok"].vocab_size(), context=64)
    oracle.export_lm(oracle.reference_lm(cfg, seed=5), root / "model.safetensors")
    (root / cfg["mimi_name"]).write_bytes(assets["mimi"].read_bytes())
    (root / cfg["tokenizer_name"]).write_bytes(assets["tokenizer"].read_bytes())
    (root / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_finetune_published_checkpoint(assets, published, tmp_path, mode):
    raw = {
        "run": {
            "out_dir": str(tmp_path / "ft"),
            "max_steps": 6,
            "log_every": 2,
            "save_every": 6,
            "progress": False,
            "num_threads": 1,
        },
        "optim": {"lr": 2e-3, "warmup_steps": 1, "batch_size": 2},
        "data": {
            "train": str(assets["manifest"]),
            "eval_split": "eval",
            "cache_dir": str(assets["root"] / "cache"),
        },
        "model": {"init": str(published), "mimi_config": copy.deepcopy(TINY_MIMI), "export_dtype": "float32"},
    }
    if mode == "lora":
        raw["lora"] = {"enabled": True, "rank": 4, "scaling": 2.0}
    result = train(cfg_of(raw, "stt", tmp_path))
    assert result.step == 6
    export = tmp_path / "ft" / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["stt_config"]["audio_delay_seconds"] == 0.5  # kept from the checkpoint
    before = load_file(str(published / "model.safetensors"))
    after = load_file(str(export / "model.safetensors"))
    assert after.keys() == before.keys()
    attn = "transformer.layers.0.self_attn.in_proj_weight"
    assert not torch.equal(after[attn], before[attn].float())
    if mode == "lora":  # only the adapted weights moved; embeddings stay frozen
        assert torch.equal(after["emb.0.weight"], before["emb.0.weight"].float())
        assert torch.equal(after["text_emb.weight"], before["text_emb.weight"].float())
    else:
        assert not torch.equal(after["text_emb.weight"], before["text_emb.weight"].float())
    lm = load_lm(export / "model.safetensors", export / "config.json", dtype=torch.float32)
    assert torch.equal(lm.state_dict()[attn], after[attn])
    stt = Transcriber.from_checkpoint(export, mimi_config=tiny_mimi_config())
    out = stt.transcribe(assets["root"] / "data" / "clips" / "010.wav")
    assert len(out.tokens) == 25 + 7  # 2 s of audio and ceil(0.5 * 12.5) delay steps
    assert isinstance(out.text, str)


def test_finetune_reads_codec_architecture_from_init_config(assets, published, tmp_path):
    """A dsm export names its (smaller) codec's architecture in config.json's mimi_config: fine-tuning
    it again needs no [model.mimi_config] (a later stage of a recipe starts from an earlier's export)."""
    init = tmp_path / "init"
    init.mkdir()
    for path in published.iterdir():
        (init / path.name).symlink_to(path)
    config = json.loads((published / "config.json").read_text())
    (init / "config.json").unlink()
    (init / "config.json").write_text(json.dumps({**config, "mimi_config": copy.deepcopy(TINY_MIMI)}))
    raw = {
        "run": {"out_dir": str(tmp_path / "ft"), "max_steps": 2, "save_every": 2, "progress": False},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "batch_size": 2},
        "data": {"train": str(assets["manifest"]), "cache_dir": str(assets["root"] / "cache")},
        "model": {"init": str(init), "export_dtype": "float32"},
    }
    assert train(cfg_of(raw, "stt", tmp_path)).step == 2
    exported = json.loads((tmp_path / "ft" / "export" / "config.json").read_text())
    assert MimiConfig.from_dict(exported["mimi_config"]) == MimiConfig.from_dict(TINY_MIMI)


def write_stt_toml(assets, path, max_steps: int) -> None:
    arch = ", ".join(
        f"{k} = {json.dumps(v)}"
        for k, v in stt_config_dict(assets, path)["model"]["arch"].items()
        if v is not None
    )
    path.write_text(
        f"""
[run]
out_dir = "run"
max_steps = {max_steps}
log_every = 1
save_every = 2
num_threads = 1
[optim]
lr = 1e-3
batch_size = 2
warmup_steps = 1
[data]
train = "{assets["manifest"]}"
cache_dir = "{assets["root"] / "cache"}"
[model]
tokenizer = "{assets["tokenizer"]}"
mimi_weight = "{assets["mimi"]}"
arch = {{ {arch} }}
[model.mimi_config]
num_layers = 1
num_heads = 2
dim_feedforward = 64
context = 50
codebook_dim = 16
seanet = {{ n_filters = 4, dimension = 32 }}
[stt]
delay_seconds = 0.24
"""
    )


def test_cli_train_and_resume(assets, tmp_path, capsys):
    write_stt_toml(assets, tmp_path / "stt.toml", max_steps=3)
    assert main(["train", "stt", "--config", str(tmp_path / "stt.toml"), "-q"]) == 0
    assert "trained stt for 3 steps" in capsys.readouterr().out
    assert (
        main(["train", "stt", "--config", str(tmp_path / "stt.toml"), "-q", "--resume", "--max-steps", "5"])
        == 0
    )
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "loss" in r] == [1, 2, 3, 4, 5]
    (tmp_path / "bad.toml").write_text("[run]\nmax_step = 3\n[data]\ntrain = 'x.jsonl'\n")
    assert main(["train", "stt", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "unknown keys max_step" in capsys.readouterr().err


def test_config_errors(tmp_path):
    (tmp_path / "c.toml").write_text("[optim]\nlr = 'fast'\n[data]\ntrain = 'm.jsonl'\n")
    with pytest.raises(InputError, match=r"\[optim\]\.lr: expected float"):
        load_config(tmp_path / "c.toml", "codec")
    with pytest.raises(InputError, match="unknown tables"):
        parse_config({"trainer": {}}, "stt", tmp_path)
    with pytest.raises(InputError, match="needs `init`"):
        parse_config({"data": {"train": "m.jsonl"}}, "stt", tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.toml", "stt")


def test_codes_cache_keys(assets, tmp_path):
    mimi = load_mimi(assets["mimi"], config=tiny_mimi_config())
    cache = CodesCache(tmp_path / "cache", mimi)
    clip = assets["root"] / "data" / "clips" / "000.wav"
    codes = cache.codes(clip, 8, silence_frames=2)
    assert codes.shape == (8, 25 + 2) and cache.misses == 1
    assert torch.equal(cache.codes(clip, 8, silence_frames=2), codes) and cache.hits == 1
    copy_path = tmp_path / "renamed.wav"
    copy_path.write_bytes(clip.read_bytes())
    assert torch.equal(cache.codes(copy_path, 8, silence_frames=2), codes) and cache.hits == 2  # same bytes
    four = cache.codes(clip, 4, silence_frames=2)  # fewer codebooks: the same entry, sliced
    assert torch.equal(four, codes[:4]) and cache.hits == 3 and cache.misses == 1
    wav = torch.from_numpy(read_audio(str(clip), sample_rate=24_000))
    wav = torch.nn.functional.pad(wav, (0, -wav.shape[0] % 1920 + 2 * 1920))
    with torch.no_grad():
        assert torch.equal(four, mimi.encode(wav.view(1, 1, -1), n_q=4)[0])
    # less silence: the prefix of the entry with more (the codec is causal), equal to encoding it afresh
    bare = cache.codes(clip, 8)
    assert cache.misses == 1 and cache.hits == 4 and bare.shape == (8, 25)
    assert torch.equal(bare, CodesCache(tmp_path / "fresh", mimi).codes(clip, 8))
    cache.codes(clip, 4, silence_frames=3)
    assert cache.misses == 2  # more silence than any entry has: encoded
    with pytest.raises(ValueError, match="n_q"):
        cache.codes(clip, mimi.total_codebooks + 1)
    other = load_mimi(assets["mimi"], config=tiny_mimi_config())
    with torch.no_grad():
        other.quantizer.rvq_first.input_proj.weight.mul_(1.5)
    cache2 = CodesCache(tmp_path / "cache", other)
    assert cache2.identity != cache.identity
    cache2.codes(clip, 8, silence_frames=2)
    assert cache2.misses == 1  # another codec
    latent = cache.latent(clip, 0.8)
    assert latent.shape == (10, 32)


@pytest.mark.parametrize("name", ["codec_tiny", "stt_tiny", "stt_finetune_lora", "tts_tiny"])
def test_example_configs_parse(name):
    from pathlib import Path

    from dsm.lm import LMConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "train" / f"{name}.toml"
    kind = name.split("_")[0]
    cfg = load_config(path, kind)
    assert cfg.kind == kind and cfg.out_dir.parent.name == "runs"
    if cfg.model.arch:
        LMConfig.from_kyutai(cfg.model.arch)
    if kind == "codec":
        from dsm.codec import MimiConfig

        assert MimiConfig.from_dict(cfg.codec.arch).n_q == 8


def test_ddp_with_torchrun(assets, tmp_path):
    """Two CPU processes (gloo) launched by torchrun through the command line train one model."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("dsm") or str(Path(sys.executable).parent / "dsm")
    if not Path(exe).exists():
        pytest.skip("the dsm command is not installed")
    write_stt_toml(assets, tmp_path / "stt.toml", max_steps=4)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "--no-python",
        exe,
        "train",
        "stt",
        "--config",
        str(tmp_path / "stt.toml"),
        "-q",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained stt for 4 steps") == 2  # both ranks
    state = _state(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4 and len(state["ranks"]) == 2
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


@pytest.mark.parametrize("dim", [32, 64])  # the tiny codec's latent width, and wider (random projection)
def test_codec_embeddings_start_from_the_codec_latent(assets, tmp_path, dim):
    """With [model].codec_embeddings a new LM's summed audio embedding of a frame is a fixed linear map of
    the codec's latent for its codes (the identity up to scale when the widths agree)."""
    from dsm.train.lm_task import load_setup

    arch = {**copy.deepcopy(STT_ARCH), "dim": dim}
    raw = stt_config_dict(assets, tmp_path / "run", model={"arch": arch, "codec_embeddings": True})
    setup = load_setup(cfg_of(raw, "stt", tmp_path), torch.device("cpu"))
    lm, mimi = setup.lm, setup.mimi
    codes = torch.randint(0, lm.cfg.card, (1, lm.cfg.n_q, 200))
    with torch.no_grad():
        summed = sum(lm.emb[q](codes[:, q]) for q in range(lm.cfg.n_q))[0]  # [T, dim]
        latent = mimi.quantizer.decode(codes)[0].T  # [T, 32]
    fit = torch.linalg.lstsq(latent, summed).solution
    assert torch.allclose(latent @ fit, summed, atol=1e-5 * float(summed.abs().max()))
    if dim == latent.shape[1]:
        scale = float(summed.norm() / latent.norm())
        assert torch.allclose(summed, latent * scale, atol=1e-6)
    assert 0.5 < float(summed.pow(2).mean().sqrt()) / (0.02 * lm.cfg.n_q**0.5) < 2.0
    assert not torch.equal(lm.emb[0].weight[-1], torch.zeros(dim))  # the initial token keeps its row


def test_codec_embeddings_only_from_scratch(assets, published, tmp_path):
    raw = {
        "run": {"out_dir": str(tmp_path / "run")},
        "data": {"train": str(assets["manifest"]), "cache_dir": str(assets["root"] / "cache")},
        "model": {"init": str(published), "mimi_config": copy.deepcopy(TINY_MIMI), "codec_embeddings": True},
    }
    from dsm.train.lm_task import load_setup

    with pytest.raises(InputError, match="codec_embeddings is for models trained from scratch"):
        load_setup(cfg_of(raw, "stt", tmp_path), torch.device("cpu"))


def test_tts_voice_pool_bounds_the_voice_clips(assets, tmp_path):
    """[tts].voice_pool = 1: every item's voice comes from its speaker's first training utterance, and only
    those clips' latents are encoded."""
    from dsm.train.loop import DistInfo
    from dsm.train.run import build_task

    raw = tts_config_dict(assets, tmp_path / "run", tts={"voice_pool": 1})
    task = build_task(cfg_of(raw, "tts", tmp_path), DistInfo())
    firsts = {}
    for item in task.train_items:
        firsts.setdefault(item.speaker, item.audio)
    assert dict(task.by_speaker) == {k: [v] for k, v in firsts.items()}
    assert set(task.latents) == set(firsts.values())
    for item in task.train_items + task.eval_items:
        assert task._voice_source(item, train=True) == firsts[item.speaker]
    with pytest.raises(InputError, match="voice_pool"):
        cfg_of(tts_config_dict(assets, tmp_path / "bad", tts={"voice_pool": -1}), "tts", tmp_path)


def test_tts_condition_dropout_is_the_generation_null_branch(assets, tmp_path):
    """A dropped training item is what generation's CFG null branch (`cfg_is_no_text`) sees: the temporal
    transformer's inputs without text (tests/test_lm.py checks that forward then matches that branch), no
    text loss, every condition null; the codes themselves (the targets) are unchanged. Evaluation batches
    never drop."""
    from dsm.train.loop import DistInfo
    from dsm.train.run import build_task

    raw = tts_config_dict(assets, tmp_path / "run", tts={"condition_dropout": 1.0})
    task = build_task(cfg_of(raw, "tts", tmp_path), DistInfo())
    items = task.train_items[:3]
    kept = [task.example(item) for item in items]
    dropped = task.make_batch(items, train=True)
    inputs = dropped.extra["inputs"]
    assert bool((inputs[:, 0] == -1).all()) and torch.equal(inputs[:, 1:], dropped.codes[:, 1:])
    assert float(dropped.text_weight.sum()) == 0.0
    for b, example in enumerate(kept):
        assert torch.equal(dropped.codes[b, :, : example.codes.shape[1]], example.codes)
        assert float(example.text_weight.sum()) > 0
    for attrs in dropped.extra["attributes"]:
        assert all(v is None for v in attrs.text.values())
        assert all(not bool(c.mask.any()) and not bool(c.tensor.any()) for c in attrs.tensor.values())
    _, metrics = task.module(dropped)
    assert float(metrics["text_loss"]) == 0.0 and float(metrics["audio_loss"]) > 0
    evaluation = task.make_batch(items, train=False)
    assert "inputs" not in evaluation.extra and float(evaluation.text_weight.sum()) > 0
    assert all(bool(c.mask.any()) for a in evaluation.extra["attributes"] for c in a.tensor.values())

    raw = tts_config_dict(assets, tmp_path / "half", tts={"condition_dropout": 0.5})
    task = build_task(cfg_of(raw, "tts", tmp_path), DistInfo())
    items = task.train_items[:4] * 10
    drops = ["inputs" in task.make_batch([item], train=True).extra for item in items]
    assert 5 <= sum(drops) <= 35


def test_tts_code_noise_touches_only_the_audio_history(assets, tmp_path):
    """[tts].code_noise: about that fraction of the real audio codes the temporal transformer reads are
    random; the text, the -1 entries and the targets (batch.codes) stay; evaluation is clean."""
    from dsm.train.loop import DistInfo
    from dsm.train.run import build_task

    raw = tts_config_dict(assets, tmp_path / "run", tts={"code_noise": 0.3, "condition_dropout": 0.0})
    task = build_task(cfg_of(raw, "tts", tmp_path), DistInfo())
    items = task.train_items[:4]
    clean = task.make_batch(items, train=False)
    noisy = task.make_batch(items, train=True)
    assert "inputs" not in clean.extra and torch.equal(noisy.codes, clean.codes)
    inputs = noisy.extra["inputs"]
    assert torch.equal(inputs[:, 0], clean.codes[:, 0])
    real = clean.codes[:, 1:] >= 0
    assert torch.equal(inputs[:, 1:][~real], clean.codes[:, 1:][~real])
    changed = float((inputs[:, 1:][real] != clean.codes[:, 1:][real]).float().mean())
    assert 0.2 < changed < 0.4
    _, metrics = task.module(noisy)
    assert float(metrics["audio_loss"]) > 0
    with pytest.raises(InputError, match="code_noise"):
        cfg_of(tts_config_dict(assets, tmp_path / "bad", tts={"code_noise": 1.0}), "tts", tmp_path)


BUNDLED_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "bundled").glob("*.toml"))


@pytest.mark.parametrize("path", BUNDLED_CONFIGS, ids=lambda p: p.stem)
def test_bundled_recipe_configs_parse(path):
    """Every stage config of the bundled-model recipe (scripts/train_bundled.sh) loads, with its model."""
    from dsm.codec import MimiConfig
    from dsm.lm import LMConfig

    kind = "codec" if path.stem.startswith("codec") else path.stem.split("_")[0]
    cfg = load_config(path, kind)
    assert cfg.out_dir.parent.name == "bundled" and cfg.out_dir.parent.parent.name == "runs"
    if kind == "codec":
        eight = path.stem in ("codec", "codec_decoder", "codec_distill", "codec_wide", "codec_all")
        # codec_16 and the stages that start from it have codebooks 9-16
        assert MimiConfig.from_dict(cfg.codec.arch).n_q == (8 if eight else 16)
    elif cfg.model.init:  # a later stage: an earlier stage's export, read when it runs
        init = Path(cfg.model.init)
        assert init.name == "export" and init.parent.parent.name == "bundled", init
    else:
        lm = LMConfig.from_kyutai(cfg.model.arch)
        assert MimiConfig.from_dict(cfg.model.mimi_config).n_q >= lm.n_q


def test_tts_draw_audio_codes_is_teacher_forced(assets, tmp_path):
    """`TtsTask.draw_audio_codes`: one code per generated codebook and audio frame of the item, greedy
    draws are the teacher-forced argmax at the item's frames (the audio delay removed), and a seeded
    generator repeats its draws."""
    from dsm.train.loop import DistInfo
    from dsm.train.run import build_task

    raw = tts_config_dict(assets, tmp_path / "run", tts={"condition_dropout": 0.0})
    task = build_task(cfg_of(raw, "tts", tmp_path), DistInfo())
    task.module.eval()
    item = task.train_items[0]
    greedy = task.draw_audio_codes(item, temperature=0.0)
    n = task.lm.cfg.dep_q
    assert greedy.shape == (n, item.frames) and item.frames > 10
    batch = task.make_batch([item], train=False)
    with torch.no_grad():
        out = task.lm(batch.codes, **task.module.conditions(batch))
    frames = slice(task.delay_steps, task.delay_steps + item.frames)
    truth = batch.codes[0, 1 : 1 + n, frames]
    assert torch.equal(truth, item.codes[:n])  # frame f is the item's audio frame f
    expected = torch.where(truth >= 0, out.logits[0, :, frames].float().argmax(-1), -1)
    assert torch.equal(greedy, expected) and int(greedy.min()) >= 0
    drawn = [task.draw_audio_codes(item, 1.0, 0, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], greedy)


def test_tts_expected_acoustic_codewords_are_soft_decodings_latent(assets, tmp_path):
    """`TtsTask.expected_acoustic_codewords`: through the acoustic quantizer's output projection, the sum
    over codebooks 1+ of each one's code vectors averaged under the teacher-forced distribution (what soft
    decoding hands the decoder), at the item's audio frames."""
    from dsm.train.loop import DistInfo
    from dsm.train.run import build_task

    raw = tts_config_dict(assets, tmp_path / "run", tts={"condition_dropout": 0.0})
    task = build_task(cfg_of(raw, "tts", tmp_path), DistInfo())
    task.module.eval()
    item = task.train_items[0]
    mean = task.expected_acoustic_codewords(item)
    quant = task.setup.mimi.quantizer
    assert mean.shape == (quant.rvq_rest.vq.layers[0]._codebook.embedding.shape[1], item.frames)
    assert bool(mean.isfinite().all())
    logits, truth = task.teacher_forced_logits(item)
    n = task.lm.cfg.dep_q
    vectors = quant.code_vectors()[1:n].float()  # [n - 1, bins, C]
    probs = torch.softmax(logits[1:, :, : vectors.shape[1]], -1)
    expected = torch.einsum("qtb,qbc->ct", probs, vectors)
    with torch.no_grad():
        got = quant.rvq_rest.output_proj(mean[None])[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(truth, item.codes[:n])
