"""Shared fixtures: reference models with random weights and dsm models loaded from their export."""

from __future__ import annotations

import contextlib
import gc

import lm_configs
import pytest
import torch

ARCHS = {
    "stt-1b-en_fr": lm_configs.STT_1B,
    "stt-2.6b-en": lm_configs.STT_2B6,
    "tts-1.6b-en_fr": lm_configs.TTS_1B6,
}


@contextlib.contextmanager
def _torch_threads(n: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for a whole module (its module-scoped fixtures included; use it with
    `pytestmark = pytest.mark.usefixtures("one_thread_module")`): small models' steps gain nothing from
    more, and on a busy machine spinning OpenMP threads make them many times slower."""
    with _torch_threads(1):
        yield


@pytest.fixture
def one_thread():
    """One torch thread for a test, restored after it (for tests whose code sets the thread count)."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def lm_pairs(tmp_path_factory, request):
    """get(name, dtype) -> (config dict, reference LMModel, dsm LMModel with the same weights), cached.

    Real architectures at 2 layers (2 depformer layers), random weights, exported from the reference
    in Kyutai's checkpoint layout and loaded through dsm's loader."""
    oracle = pytest.importorskip("oracle")
    from dsm.lm import LMConfig, load_lm

    cache: dict = {}

    def get(name: str, dtype: torch.dtype = torch.float32):
        key = (name, dtype)
        if key not in cache:
            torch.set_num_threads(2)
            cfg = lm_configs.reduced(ARCHS[name])
            ref = oracle.reference_lm(cfg, seed=1, dtype=dtype)
            path = oracle.export_lm(ref, tmp_path_factory.mktemp("lm") / "model.safetensors")
            ours = load_lm(path, LMConfig.from_kyutai(cfg), dtype=dtype)
            path.unlink()  # up to 2.6 GB each: six of them would fill a small CI disk
            if dtype != torch.float32 and ref.condition_provider is not None:
                ref.condition_provider.float()  # as the reference loader keeps it
            cache[key] = (cfg, ref, ours)
        return cache[key]

    request.session.dsm_lm_pairs_cache = cache
    return get


@pytest.fixture(scope="module", autouse=True)
def _release_lm_pairs(request):
    """Models built by `lm_pairs` live only as long as the test module that asked for them: the three
    architectures in two dtypes, reference and dsm copies, would otherwise hold gigabytes all session."""
    yield
    cache = getattr(request.session, "dsm_lm_pairs_cache", None)
    if cache:
        cache.clear()
        gc.collect()


@pytest.fixture(scope="session")
def stt_assets(tmp_path_factory):
    """The small STT model directory's assets of `tests/stt_assets.py` (built once per session)."""
    pytest.importorskip("oracle")
    from stt_assets import build_assets

    return build_assets(tmp_path_factory.mktemp("stt-assets"))
