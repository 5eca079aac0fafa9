"""The query gateway: the client wire protocol, admission, and batching into shard rounds."""
