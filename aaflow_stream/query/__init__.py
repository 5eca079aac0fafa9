"""The query path: exact distributed top-k over the shard ranks."""
