"""T5 tokenizer: sentencepiece `spiece.model` -> fixed-length ids and attention mask.

Behaves like Hugging Face's `T5Tokenizer(spiece.model)` called with
`padding="max_length", truncation=True, max_length=L` on plain-text captions:
  ids  = sentencepiece pieces of the caption, cut to the first L - 1, then EOS (id 1),
         then PAD (id 0) up to L;
  mask = 1 on the pieces and on EOS, 0 on padding.
So every row has at least one valid token (EOS) and valid tokens form a prefix.

Padding convention (shared by precompute and sampling; see `muse_jax.encoders.text_encoder`):
padded ids hold the PAD id, the mask is 0 there, the encoder ignores those keys and returns
exactly zero embeddings at those positions; downstream stages use the valid length
`mask.sum(-1)`.

Difference from the HF tokenizer: strings such as "</s>" or "<extra_id_0>" inside a caption are
encoded as ordinary text, never as the special tokens (HF maps them to the special ids).
Captions are data, so this is the safer behaviour.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from muse_jax import paths


@dataclasses.dataclass(frozen=True)
class TokenizedBatch:
  """ids [B, L] int32 and mask [B, L] int32 (1 = real token incl. EOS, 0 = padding)."""
  ids: np.ndarray
  mask: np.ndarray

  @property
  def lengths(self) -> np.ndarray:
    """Valid length of each row (pieces + EOS), [B] int32."""
    return self.mask.sum(-1).astype(np.int32)


class T5Tokenizer:
  """Sentencepiece tokenizer with T5's EOS, padding and truncation.

  Args:
    spiece_model: path to a sentencepiece model (T5's `spiece.model`).
    max_length: L, the fixed output length (EOS included).
    num_threads: sentencepiece encoding threads for a batch (0 = its default).
  """

  def __init__(self, spiece_model: str, max_length: int = 128, num_threads: int = 0):
    import sentencepiece as spm  # local import: only needed when tokenizing
    if not spiece_model or not paths.resolve(spiece_model).is_file():
      raise FileNotFoundError(
          f"sentencepiece model not found: {spiece_model!r}; set text_encoder.spiece_model to "
          "T5's spiece.model")
    if max_length < 1:
      raise ValueError(f"max_length must be >= 1 (room for EOS), got {max_length}")
    # From bytes: a local path and a gs:// URL alike.
    self.sp = spm.SentencePieceProcessor(model_proto=paths.resolve(spiece_model).read_bytes())
    self.max_length = int(max_length)
    self.num_threads = int(num_threads)
    self.eos_id = int(self.sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(f"{spiece_model} defines no EOS piece; T5's spiece.model has eos_id=1")
    pad = int(self.sp.pad_id())
    self.pad_id = pad if pad >= 0 else 0  # T5: pad = 0 (HF's T5Tokenizer uses 0 too)

  @property
  def vocab_size(self) -> int:
    """Number of sentencepiece pieces (ids are < this)."""
    return int(self.sp.get_piece_size())

  def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
    """Piece ids per caption, without EOS and without truncation."""
    if isinstance(texts, str):
      raise TypeError("pass a list of captions, not a single string")
    kwargs = {"num_threads": self.num_threads} if self.num_threads else {}
    return self.sp.encode(list(texts), out_type=int, **kwargs)

  def __call__(self, texts: Sequence[str]) -> TokenizedBatch:
    pieces = self.encode_ids(texts)
    n, length = len(pieces), self.max_length
    ids = np.full((n, length), self.pad_id, dtype=np.int32)
    mask = np.zeros((n, length), dtype=np.int32)
    for row, p in enumerate(pieces):
      p = p[:length - 1]
      ids[row, :len(p)] = p
      ids[row, len(p)] = self.eos_id
      mask[row, :len(p) + 1] = 1
    return TokenizedBatch(ids, mask)
