"""A shard: one FAISS index and the Arrow metadata of its rows, owned by one MPI rank."""
