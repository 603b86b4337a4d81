"""What each rank of a group does with its tile, on worker processes and torchrun ranks
alike: ``steps`` (scatter, halo exchange, compute, gather), ``backward`` (their adjoints),
``master_windows`` (windows sent whole by the master: exchange='master', dynamic
scheduling), ``transfer`` (how a box travels between ranks), ``comm`` (counted messages;
Link, a slower network stood in for)."""
