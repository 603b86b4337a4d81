"""Engines that run a plan's tiles on threads of this process: ``tensors`` (the threads
engine on torch tensors, gradients too), ``arrays`` (the threads engine on numpy arrays, for
backends that compute arrays: no torch), ``helpers`` (the helper threads kept for the
process that both run on)."""
