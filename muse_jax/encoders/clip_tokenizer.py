"""CLIP's byte-level BPE tokenizer in pure Python: `vocab.json` + `merges.txt` -> ids and mask.

Behaves like transformers' `CLIPTokenizer` (the `tokenizers`-backed one of transformers 5)
called with `padding="max_length", truncation=True, max_length=L` on plain-text captions:
  text  = NFC(text), lowercased character by character (no final-sigma rule, as `tokenizers`)
  words = text split, left to right, into the contractions 's 't 're 've 'm 'll 'd, runs of
          letters (Unicode category L*), single numeric characters (N*), and runs of anything
          else that is not whitespace; whitespace only separates
  word  -> its UTF-8 bytes written with GPT-2's byte-level alphabet (one printable character
          per byte), one symbol per byte with "</w>" appended to the last; then BPE: merge
          the adjacent pair ranked first in merges.txt, all its occurrences left to right,
          until no adjacent pair is listed; each symbol -> its id in vocab.json
  ids   = <|startoftext|>, the first L - 2 word ids, <|endoftext|>, then the pad id (by
          default <|endoftext|>'s, as CLIPTokenizer's) up to L
  mask  = 1 on the start, word and end tokens, 0 on padding.
This is the text `muse_jax.models.clip` expects: with OpenAI's vocabulary <|endoftext|> is the
largest id, so argmax pooling and first-EOS pooling pick the same position.

Differences:
- "<|startoftext|>" and "<|endoftext|>" inside a caption are encoded as text, never as the
  special tokens (transformers maps them to the special ids). Captions are data.
- OpenAI's original tokenizer (`clip.simple_tokenizer`) also runs `ftfy.fix_text` and
  `html.unescape` on the text first, so captions with HTML entities or mojibake tokenize
  differently there; transformers' tokenizer and this one do not.
"""
from __future__ import annotations

import json
import unicodedata
from typing import Sequence

import numpy as np

from muse_jax import paths
from muse_jax.encoders.text_tokenizer import TokenizedBatch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")
_NOT_REGEX_SPACE = "\x1c\x1d\x1e\x1f"   # str.isspace() but not Unicode White_Space


def byte_alphabet() -> list[str]:
  """GPT-2's stand-in character for each byte: printable Latin-1 bytes stand for themselves,
  the others (controls, space, soft hyphen...) for chr(256), chr(257), ... in byte order."""
  keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
  others = iter(range(256, 512))
  return [chr(b) if b in keep else chr(next(others)) for b in range(256)]


def _kind(ch: str) -> str:
  if ch.isspace() and ch not in _NOT_REGEX_SPACE:
    return " "
  cat = unicodedata.category(ch)[0]
  return cat if cat in "LN" else "other"


def split_words(text: str) -> list[str]:
  """Normalised text -> words (module docstring)."""
  words, i, n = [], 0, len(text)
  while i < n:
    if text[i] == "'":
      c = next((c for c in CONTRACTIONS if text.startswith(c, i + 1)), None)
      if c is not None:
        words.append("'" + c)
        i += 1 + len(c)
        continue
    kind = _kind(text[i])
    j = i + 1
    if kind in ("L", "other"):
      while j < n and _kind(text[j]) == kind:
        j += 1
    if kind != " ":
      words.append(text[i:j])
    i = j
  return words


class CLIPTokenizer:
  """Byte-level BPE with CLIP's start/end tokens, truncation and padding.

  Args:
    vocab_file, merges_file: transformers' `vocab.json` (token -> id) and `merges.txt`
      (one "a b" pair per line by rank; a leading "#version" line is skipped).
    max_length: L, the fixed output length (start and end tokens included; CLIP: 77).
    pad_token: the padding token (CLIPTokenizer's default: <|endoftext|>).
  """

  def __init__(self, vocab_file: str, merges_file: str, max_length: int = 77,
               pad_token: str = EOS):
    self.vocab: dict[str, int] = json.loads(paths.resolve(vocab_file).read_text("utf-8"))
    lines = paths.resolve(merges_file).read_text("utf-8").splitlines()
    if lines and lines[0].startswith("#version"):
      lines = lines[1:]
    self.ranks = {tuple(ln.split(" ")): r for r, ln in enumerate(ln for ln in lines if ln)}
    for name, tok in (("start", BOS), ("end", EOS), ("pad", pad_token)):
      if tok not in self.vocab:
        raise ValueError(f"{vocab_file} has no {name} token {tok!r}")
    if max_length < 2:
      raise ValueError(f"max_length must be >= 2 (start and end tokens), got {max_length}")
    self.bos_id, self.eos_id = self.vocab[BOS], self.vocab[EOS]
    self.pad_id, self.max_length = self.vocab[pad_token], int(max_length)
    self._bytes = byte_alphabet()
    self._cache: dict[str, list[int]] = {}

  @classmethod
  def from_dir(cls, path: str, **kwargs) -> "CLIPTokenizer":
    """From a directory holding vocab.json and merges.txt (a Hugging Face CLIP checkpoint)."""
    root = str(path).rstrip("/")
    return cls(f"{root}/vocab.json", f"{root}/merges.txt", **kwargs)

  def _bpe(self, word: str) -> list[str]:
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
      pairs = set(zip(symbols, symbols[1:]))
      best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    return symbols

  def _word_ids(self, word: str) -> list[int]:
    if word not in self._cache:
      chars = "".join(self._bytes[b] for b in word.encode("utf-8"))
      self._cache[word] = [self.vocab.get(s, self.eos_id) for s in self._bpe(chars)]
    return self._cache[word]

  def encode(self, text: str) -> list[int]:
    """Token ids of one caption, without start/end tokens and without truncation."""
    text = "".join(ch.lower() for ch in unicodedata.normalize("NFC", text))
    return [i for w in split_words(text) for i in self._word_ids(w)]

  def __call__(self, texts: Sequence[str]) -> TokenizedBatch:
    if isinstance(texts, str):
      raise TypeError("pass a list of captions, not a single string")
    n, length = len(texts), self.max_length
    ids = np.full((n, length), self.pad_id, np.int32)
    mask = np.zeros((n, length), np.int32)
    for row, text in enumerate(texts):
      toks = [self.bos_id] + self.encode(text)[:length - 2] + [self.eos_id]
      ids[row, :len(toks)] = toks
      mask[row, :len(toks)] = 1
    return TokenizedBatch(ids, mask)
