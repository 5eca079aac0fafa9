"""Links between actors: ZeroMQ sockets carrying Arrow frames under credit flow control."""
