"""Declared pre-processing steps that run inside a local backend's execution.

`TextTokenizer` turns a BYTES tensor of UTF-8 texts into the token id and
attention mask tensors a transformer graph takes, padded to the longest text
of the batch, so callers send text and batches mix texts of any length.

What a text may cost is bounded (docs/configuration.md#request-limits): it is
cut at BYTES_PER_TOKEN bytes per token of `max_length` before it is tokenized
(the tokenizer encodes a text whole before truncating it: an 11 MB text took
15 s and 1.6 GB), and texts are tokenized TOKENIZE_GROUP at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.config.schema import TokenizerConfig

# Bytes of a text kept per token of max_length: English runs about 4.5 bytes per
# token, CJK about 3; past 16, truncation would drop the tokens anyway.
BYTES_PER_TOKEN = 16
# Texts encoded at once: the tokenizer's transient memory (about 200 bytes per
# token before truncation) stays near 25 MB at max_length 256.
TOKENIZE_GROUP = 32


class TextTokenizer:
    """A `tokenizers` fast tokenizer (tokenizer.json) as a pre-processing step."""

    def __init__(self, config: TokenizerConfig, path: Path) -> None:
        from tokenizers import Tokenizer  # imported only by backends that tokenize

        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        self.input = config.input
        self.ids_input = config.ids_input
        self.mask_input = config.mask_input
        self.max_texts = config.max_texts
        self.max_text_bytes = config.max_length * BYTES_PER_TOKEN
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length=config.max_length)
        padding = tokenizer.padding or {}
        self._pad_id = padding.get("pad_id", 0)
        # Pad to the longest text of each batch (length=None), with the model's pad token.
        tokenizer.enable_padding(
            pad_id=self._pad_id,
            pad_token=padding.get("pad_token", "[PAD]"),
            length=None,
        )
        self._tokenizer = tokenizer

    @property
    def consumes(self) -> frozenset[str]:
        """The graph inputs this step produces (callers do not send them)."""
        return frozenset({self.ids_input, self.mask_input})

    def __call__(self, texts: np.ndarray) -> dict[str, np.ndarray]:
        cut = self.max_text_bytes
        strings = [
            t[:cut].decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)[:cut]
            for t in texts.reshape(-1)
        ]
        if not strings:
            empty = np.zeros((0, 1), dtype=np.int64)
            return {self.ids_input: empty, self.mask_input: empty}
        if len(strings) <= TOKENIZE_GROUP:
            ids, mask = self._encode(strings)
        else:
            ids, mask = self._encode_in_groups(strings)
        return {self.ids_input: ids, self.mask_input: mask}

    def _encode(self, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(strings)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def _encode_in_groups(self, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """As one encode_batch would: every row padded (on the right, with the pad
        token and a mask of 0) to the longest text of them all."""
        groups = [
            self._encode(strings[i : i + TOKENIZE_GROUP])
            for i in range(0, len(strings), TOKENIZE_GROUP)
        ]
        width = max(group_ids.shape[1] for group_ids, _ in groups)
        ids = np.full((len(strings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(strings), width), dtype=np.int64)
        row = 0
        for group_ids, group_mask in groups:
            rows, length = group_ids.shape
            ids[row : row + rows, :length] = group_ids
            mask[row : row + rows, :length] = group_mask
            row += rows
        return ids, mask
