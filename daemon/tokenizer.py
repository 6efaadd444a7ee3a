"""Prompt tokenization with the bundle's `tokenizer.json` (the `tokenizers` library; no transformers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """Prompts padded to the longest one (padding to a fixed 77 costs ~6x the text model's time)."""

    input_ids: np.ndarray  # int64 [prompts, tokens]
    attention_mask: np.ndarray  # int64 [prompts, tokens], 1 for real tokens


class PromptTokenizer:
    def __init__(self, tokenizer_file: Path, *, pad_token_id: int, max_tokens: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        self._pad_token_id = pad_token_id

    def __call__(self, prompts: list[str]) -> TokenBatch:
        if not prompts:
            raise ValueError("no prompts to tokenize")
        encodings = self._tokenizer.encode_batch(prompts)
        width = max(len(e.ids) for e in encodings)
        input_ids = np.full((len(prompts), width), self._pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(prompts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            input_ids[row, : len(encoding.ids)] = encoding.ids
            attention_mask[row, : len(encoding.ids)] = 1
        return TokenBatch(input_ids=input_ids, attention_mask=attention_mask)
