"""tuneloop.training: load and clean data, fine-tune a transformer classifier, evaluate it and
save it as a versioned model in the BentoML model store.

Importing this package does nothing heavy: torch, transformers and bentoml are imported inside
the functions that need them.
"""
