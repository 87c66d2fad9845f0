"""Frozen encoders as services: a model, its weights, a mesh and jitted calls.

text_encoder.py (T5 encoder) with text_tokenizer.py (SentencePiece), vq_tokenizer.py (the VQ
image tokenizer: encode images to token ids and decode them back).
"""
