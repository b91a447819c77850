"""Declared pre-processing steps that run inside a local backend's execution.

`TextTokenizer` turns a BYTES tensor of UTF-8 texts into the token id and
attention mask tensors a transformer graph takes, padded to the longest text
of the batch, so callers send text and batches mix texts of any length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.config.schema import TokenizerConfig


class TextTokenizer:
    """A `tokenizers` fast tokenizer (tokenizer.json) as a pre-processing step."""

    def __init__(self, config: TokenizerConfig, path: Path) -> None:
        from tokenizers import Tokenizer  # imported only by backends that tokenize

        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        self.input = config.input
        self.ids_input = config.ids_input
        self.mask_input = config.mask_input
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length=config.max_length)
        padding = tokenizer.padding or {}
        # Pad to the longest text of each batch (length=None), with the model's pad token.
        tokenizer.enable_padding(
            pad_id=padding.get("pad_id", 0),
            pad_token=padding.get("pad_token", "[PAD]"),
            length=None,
        )
        self._tokenizer = tokenizer

    @property
    def consumes(self) -> frozenset[str]:
        """The graph inputs this step produces (callers do not send them)."""
        return frozenset({self.ids_input, self.mask_input})

    def __call__(self, texts: np.ndarray) -> dict[str, np.ndarray]:
        strings = [
            t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
            for t in texts.reshape(-1)
        ]
        if not strings:
            empty = np.zeros((0, 1), dtype=np.int64)
            return {self.ids_input: empty, self.mask_input: empty}
        encodings = self._tokenizer.encode_batch(strings)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return {self.ids_input: ids, self.mask_input: mask}
