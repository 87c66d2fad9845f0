"""The procedural shapes dataset: scenes of coloured shapes with grammatical captions.

dataset.py (scenes and examples), grammar.py (the caption grammar), layout.py (object
placement), render.py (drawing).
"""
