"""What every benchmark shares: its command line and output (``cli``), tables (``table``),
running the engine (``engine``) and measuring process trees (``procs``)."""
