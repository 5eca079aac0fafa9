"""Embedders: text batches to float32 matrices and Arrow embedding columns."""
