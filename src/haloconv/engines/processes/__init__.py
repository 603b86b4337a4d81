"""The processes engine: a pool of worker processes in a gloo group. ``cluster`` (the pool's
lifecycle, faults, healing, the collective step), ``local`` (LocalCluster, and one-shot
runs on a pool started for the call), ``forkserver`` (how workers start), ``worker`` (a
worker's loop and the registry of worker halves), ``sealed`` (commands and replies sealed
with the pool's secret), ``ops/`` (each operation's master and worker halves)."""
