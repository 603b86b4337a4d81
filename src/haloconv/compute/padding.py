"""The whole input padded as a spec's padding mode reads it: the single-node references
(kernels.single_node, Backend.single_node) pad with this, so every mode, and padding wider
than the input, reads exactly what a split run's windows read (geometry.source_index)."""

from __future__ import annotations

from haloconv.tiling import geometry
from haloconv.tiling.spec import ConvSpec


def pad_input(x, spec: ConvSpec):
    """``x`` (a tensor (N, C, *spatial), the whole input) padded as torch pads it before the
    conv backend (the spec's padding less the backend's part): the padding value ('zeros',
    'constant': torch's F.pad), or the input positions the mode maps them to (taken by
    index: the same values F.pad's reflect, replicate and circular copy, and also
    'symmetric' and padding wider than the input)."""
    import torch
    import torch.nn.functional as F

    lo = [a - q for a, q in zip(spec.pad_lo, spec.backend_pad)]
    hi = [b - q for b, q in zip(spec.pad_hi, spec.backend_pad)]
    if not any(lo) and not any(hi):
        return x
    if spec.padding_mode in geometry.VALUE_MODES:
        pad: list[int] = []
        for a, b in zip(reversed(lo), reversed(hi)):
            pad += [a, b]
        return F.pad(x, pad, mode="constant", value=spec.padding_value)
    for d, (a, b) in enumerate(zip(lo, hi)):
        n = x.shape[2 + d]
        if a or b:
            index = [geometry.source_index(p, n, spec.padding_mode) for p in range(-a, n + b)]
            x = x.index_select(2 + d, torch.tensor(index, device=x.device))
    return x
