"""A shard: one FAISS index and the Arrow metadata of its rows, owned by one MPI rank; the
collective rounds over all shards (top-k merge, filters, wake-ups). Never imports ``query``."""
