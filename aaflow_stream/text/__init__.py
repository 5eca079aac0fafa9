"""Text stage functions: normalisation, chunking and chunk identity."""
