"""CLIPTokenizer (pure Python BPE) against transformers' CLIPTokenizer on random-ish captions.

There are no pretrained files here, so the test trains a small byte-level BPE (merges by pair
frequency, the same file formats as OpenAI's vocabulary) and both tokenizers read it. One
subprocess imports only transformers' tokenizer (no torch).
"""
import collections
import json
import random

import numpy as np
import pytest

from muse_jax.encoders.clip_tokenizer import CLIPTokenizer, byte_alphabet, split_words
from tests.reference import run_reference

WORDS = ("a photo of the red blue cube sphere dog cat sitting next to two three "
         "café naïve über straße zürich über déjà vu hello world painting").split()
# Pieces with the cases that matter: contractions, punctuation runs, digits and other
# numbers, accents (composed and decomposed), non-Latin scripts, emoji, unusual whitespace.
PIECES = WORDS + [
    "Don't", "it's", "WE'LL", "they're", "I'm", "you've", "he'd", "'s", "''s", "x'", "'",
    "!!", "...", "?!'", "“quoted”", "—", "(a)", "#1", "$3.50", "50%", "2024", "٣", "½", "²",
    "Ⅻ", "e\u0301", "\u0301", "ΟΔΟΣ", "ΣΑΣ σς", "İstanbul", "ǅ", "ß", "ﬁ", "\u212b", "猫",
    "ねこ", "한국어", "\u1100\u1161", "🐶", "👍🏽", "a\u200db", "\ufeff", "x_y", "A\u00a0B",
    "C\u3000D", "tab\there", "new\nline", "x\u2028y", "p\u0085q", "\u180e", "\u200b", "\x1c",
    "1,000", "3d",
]
SEPARATORS = ["", " ", " ", " ", "  ", "\t", "\n", "\u00a0"]

REFERENCE = """
import json
from transformers import CLIPTokenizer
tok = CLIPTokenizer.from_pretrained(str(inputs["dir"]))
texts = [str(t) for t in inputs["texts"]]
outputs["pieces"] = np.array([json.dumps(tok(t, add_special_tokens=False)["input_ids"])
                              for t in texts])
batch = tok(texts, padding="max_length", max_length=16, truncation=True)
outputs["ids"] = np.array(batch["input_ids"], np.int32)
outputs["mask"] = np.array(batch["attention_mask"], np.int32)
outputs["special"] = np.array([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])
"""


def captions(n, seed=0):
  rng = random.Random(seed)
  out = ["", "   ", "the " * 30, "A PHOTO of a Cat!"]
  for _ in range(n):
    parts = [rng.choice(PIECES) for _ in range(rng.randint(1, 8))]
    text = ""
    for p in parts:
      text += p + rng.choice(SEPARATORS)
    out.append(text if rng.random() < 0.5 else text.upper())
  return out


def train_bpe(texts, num_merges):
  """(vocab, merges): byte-level base symbols (and their "</w>" forms), then the most frequent
  adjacent pair merged, repeatedly; the start and end tokens last, as in OpenAI's file."""
  alphabet = byte_alphabet()
  words = collections.Counter()
  for t in texts:
    for w in split_words(t.lower()):
      chars = [alphabet[b] for b in w.encode("utf-8")]
      words[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for w, c in words.items():
      for p in zip(w, w[1:]):
        pairs[p] += c
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    new = collections.Counter()
    for w, c in words.items():
      out, i = [], 0
      while i < len(w):
        if i + 1 < len(w) and (w[i], w[i + 1]) == best:
          out.append(w[i] + w[i + 1])
          i += 2
        else:
          out.append(w[i])
          i += 1
      new[tuple(out)] += c
    words = new
  vocab = {}
  for s in alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges]:
    vocab.setdefault(s, len(vocab))
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  return vocab, merges


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("clip_bpe")
  vocab, merges = train_bpe(captions(300, seed=1) + WORDS * 5, 400)
  (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
  (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                encoding="utf-8")
  return str(d), vocab


def test_matches_transformers(files):
  d, vocab = files
  texts = captions(250)
  ref = run_reference(REFERENCE, dict(dir=np.array(d), texts=np.array(texts)))
  tok = CLIPTokenizer.from_dir(d, max_length=16)
  assert [tok.bos_id, tok.eos_id, tok.pad_id] == ref["special"].tolist()
  bad = [(t, tok.encode(t), json.loads(str(r))) for t, r in zip(texts, ref["pieces"])
         if tok.encode(t) != json.loads(str(r))]
  assert not bad, f"{len(bad)} captions differ, e.g. {bad[:3]}"
  batch = tok(texts)
  np.testing.assert_array_equal(batch.ids, ref["ids"])
  np.testing.assert_array_equal(batch.mask, ref["mask"])
  # Merges were used (not just byte symbols), and some captions were truncated.
  assert max(len(tok.encode(t)) for t in texts) > 14
  assert sum(len(tok.encode(w)) == 1 for w in WORDS) > len(WORDS) // 2


def test_layout_by_hand(files):
  d, vocab = files
  tok = CLIPTokenizer.from_dir(d, max_length=8)
  batch = tok(["", "the cat", "the " * 20])
  bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
  assert batch.ids[0].tolist() == [bos, eos] + [eos] * 6
  assert batch.mask.tolist()[0] == [1, 1, 0, 0, 0, 0, 0, 0]
  assert batch.ids[1, 0] == bos and batch.ids[1, 1] == vocab["the</w>"]
  assert batch.lengths.tolist() == [2, 2 + len(tok.encode("the cat")), 8]
  assert batch.ids[2, -1] == eos and batch.ids[2, 1:-1].tolist() == [vocab["the</w>"]] * 6
  assert split_words("it's a dog's!'s 12½") == ["it", "'s", "a", "dog", "'s", "!'", "s", "1",
                                                "2", "½"]
  with pytest.raises(TypeError, match="list of captions"):
    tok("a string")
  with pytest.raises(ValueError, match="max_length must be >= 2"):
    CLIPTokenizer.from_dir(d, max_length=1)
