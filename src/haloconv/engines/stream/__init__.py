"""Out-of-core runs: ``job`` (a streamed run's job, journal, output and a tile's read and
compute, shared by both), ``threads`` (in this process: read, compute and write of
successive tiles overlapped), ``workers`` (on worker processes or torchrun ranks)."""
