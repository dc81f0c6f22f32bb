"""Documents (the knowledge base): text and markdown split into token windows with overlap.

Chunks are measured in model tokens (the embedding model's tokenizer, without [CLS]/[SEP]) and cut on token
boundaries, keeping the original characters (the tokenizer's offsets map tokens back to the text). Markdown is first
split into sections at headings; consecutive small sections are merged up to the chunk size, so a chunk rarely
straddles two topics. Documents are not tied to blocks: reorgs never touch them.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
_HEADING = re.compile(r"^#{1,6}\s", re.MULTILINE)


def _windows(text: str, tokenizer: Any, size: int, overlap: int) -> list[str]:
    enc = tokenizer.encode(text, add_special_tokens=False)
    offsets = [o for o in enc.offsets if o[1] > o[0]]
    if not offsets:
        return [text.strip()] if text.strip() else []
    if len(offsets) <= size:
        return [text.strip()]
    step = max(1, size - overlap)
    out = []
    for start in range(0, len(offsets), step):
        end = min(start + size, len(offsets))
        piece = text[offsets[start][0]:offsets[end - 1][1]].strip()
        if piece:
            out.append(piece)
        if end == len(offsets):
            break
    return out


def chunk_text(text: str, tokenizer: Any, chunk_tokens: int = 200, overlap: int = 40,
               markdown: bool = False) -> list[str]:
    """Split ``text`` into chunks of at most ``chunk_tokens`` tokens, consecutive windows sharing ``overlap`` tokens.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` without truncation.
        markdown: split at headings first.

    Raises:
        ValueError: ``overlap`` is not below ``chunk_tokens``.
    """
    if overlap >= chunk_tokens:
        raise ValueError(f"chunk_overlap ({overlap}) must be below chunk_tokens ({chunk_tokens})")
    if not markdown:
        return _windows(text, tokenizer, chunk_tokens, overlap)
    starts = [m.start() for m in _HEADING.finditer(text)]
    bounds = sorted({0, *starts, len(text)})
    sections = [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b].strip()]
    out: list[str] = []
    buf = ""
    for sec in sections:
        joined = (buf + "\n" + sec) if buf else sec
        if len(tokenizer.encode(joined, add_special_tokens=False).ids) <= chunk_tokens:
            buf = joined
            continue
        if buf:
            out += _windows(buf, tokenizer, chunk_tokens, overlap)
        buf = sec
    if buf:
        out += _windows(buf, tokenizer, chunk_tokens, overlap)
    return out


def read_paths(paths: list[Path]) -> list[tuple[str, str, bool]]:
    """``(doc_id, text, is_markdown)`` for files and directories (recursively, text and markdown files only). The
    document id is the path as given (relative paths stay relative), so re-ingesting a file replaces it.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    out = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES) \
            if p.is_dir() else [p]
        for f in files:
            out.append((str(f), f.read_text(encoding="utf-8", errors="replace"),
                        f.suffix.lower() in (".md", ".markdown")))
    return out
