"""Backend 'ndimage1d': scipy.ndimage.correlate1d along the kernel's one axis longer than 1,
per channel (haloconv.ndimage's correlate1d and the filters built on it).  correlate1d
adds a symmetric kernel's taps in pairs, so it rounds unlike correlate: this backend is
bit for bit correlate1d on the whole input, split or not (backends/ndimage.py says why)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from haloconv.compute.backends.ndimage import Ndimage
from haloconv.tiling.spec import ConvSpec


class Ndimage1d(Ndimage):
    name = "ndimage1d"
    guarantee = "bitwise equal to scipy.ndimage.correlate1d on the whole input"
    default_rates = {}  # priced as backend 'ndimage' (its taps, below)

    def unsupported(self, spec: ConvSpec) -> str | None:
        why = super().unsupported(spec)
        if why is None and sum(k > 1 for k in spec.kernel) > 1:
            why = f"backend 'ndimage1d' computes kernels longer than 1 on one axis only, got kernel {spec.kernel}"
        return why

    def call(self, x: np.ndarray, k: np.ndarray, out: np.ndarray) -> None:
        import scipy.ndimage

        axis = next((a for a, m in enumerate(k.shape) if m > 1), k.ndim - 1)
        scipy.ndimage.correlate1d(x, k.reshape(-1), axis, output=out, mode="constant")

    def work(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], groups: int) -> dict[str, float]:
        return {"ndimage.taps": super().work(spec, window, out, groups)["ndimage1d.taps"]}

    def calibration(self, side: int) -> list[ConvSpec]:
        return []


BACKEND = Ndimage1d()
