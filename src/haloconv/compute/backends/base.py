"""What a compute backend is: the rules of when it applies, how it computes a tile's output
box from its window, what a split run of it guarantees, and the work a tile costs it in
operation counts that the cost model prices (costmodel/cost.py; `haloconv calibrate` measures
the price of each count).  One module of this package per backend (docs/architecture.md,
"Where a change goes")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from haloconv.tiling.spec import ConvSpec

if TYPE_CHECKING:
    import torch

# torch is imported where a path computes with it: the backends' rules, operation counts and
# array paths (a filter on numpy arrays, computed by OpenCV) run without it


class ByDtype(dict):
    """Values per floating dtype, keyed by name ('float32'), looked up by a torch or numpy
    dtype or the name."""

    def __getitem__(self, dtype):
        return super().__getitem__(str(dtype).removeprefix("torch."))


class Backend:
    """A compute backend.  Subclasses set the class attributes and implement
    ``correlate`` (or ``compute``), ``work`` and ``calibration``."""

    name: str = ""
    # bitwise equal to this backend's own single-node call on the whole input (direct
    # compute: the same sums in the same order whatever the tile); otherwise within
    # ``tolerance[dtype] x max|y|`` of torch's result
    exact: bool = True
    tolerance: ByDtype = ByDtype()
    guarantee: str = ""  # one line for reports: what a split run of it equals
    # whether it applies depends on the filter's values too (see ``refuses``)
    needs_values: bool = False
    # modules its compute imports on first use (besides torch, which the tensor path needs):
    # a streamed run loads them before it measures what the process holds (engines/stream/job)
    libraries: tuple[str, ...] = ()
    # the cost model's prices of this backend's operation counts (seconds per count) before
    # `haloconv calibrate` measured them; keys are "<name>.<count>"
    default_rates: dict[str, float] = {}
    # one call computes on the threads the engine gives it (OpenCV's own pool): how far that
    # speeds a call up, per kernel volume, as [[taps, speedup on every core / cores]] points
    # before `haloconv calibrate` measured it; empty: a call is priced on one core
    default_call_efficiency: tuple[tuple[int, float], ...] = ()

    def exact_for(self, spec: ConvSpec) -> bool:
        """Whether a split run of ``spec`` is bitwise equal to ``single_node`` (else within
        ``tolerance`` of torch)."""
        return self.exact

    def unsupported(self, spec: ConvSpec) -> str | None:
        """Why this backend cannot run ``spec`` (None when it can)."""
        return None

    def refuses(self, weight) -> str | None:
        """Why this backend cannot compute with these filter values (a tensor or an array;
        None when it can)."""
        return None

    def example_weight(self, spec: ConvSpec, generator: torch.Generator) -> torch.Tensor:
        """Filters this backend computes, for calibrate's timings."""
        import torch

        return torch.randn(spec.weight_shape, generator=generator)

    def computes_arrays(self, spec: ConvSpec) -> bool:
        """Whether ``compute_array`` computes ``spec`` (numpy in and out, no torch)."""
        return False

    def array_dtypes(self, x_dtype, weight_dtype, out_dtype) -> str | None:
        """Why ``compute_array`` cannot take an input, filters and output of these dtypes
        (None when it can): float32 or float64, all alike, unless a backend says more."""
        dts = {np.dtype(x_dtype), np.dtype(weight_dtype), np.dtype(out_dtype)}
        if len(dts) != 1 or dts.pop() not in (np.float32, np.float64):
            return (f"x, weight and the result must be all float32 or all float64, got {np.dtype(x_dtype)}, "
                    f"{np.dtype(weight_dtype)} and {np.dtype(out_dtype)}")
        return None

    def compute_array(self, window: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec,
                      first: Sequence[int], out: np.ndarray, threads: int, *, origin: Sequence[int]) -> None:
        """``compute`` on numpy arrays, into ``out`` (the tile's output box), with ``threads``
        cores: the same outputs, bit for bit, as ``compute`` on tensors of these values."""
        raise NotImplementedError

    def correlate(self, window: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, groups: int) -> torch.Tensor:
        """The valid cross-correlation (all channels, ``groups`` groups, the spec's
        dilation, stride 1) of ``window`` padded by ``spec.backend_pad`` with zeros (see
        ``padded``; a backend that reads zeros beyond its input need not copy it)."""
        raise NotImplementedError

    def compute(self, window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec,
                groups: int, torch_backend: object, first: Sequence[int], out_shape: Sequence[int],
                out: torch.Tensor | None = None, *, origin: Sequence[int]) -> torch.Tensor:
        """One tile's output box from its window (geometry.Axis.compute_window) padded by
        the backend padding as kernels.conv_tile pads it, keeping the same outputs.  With
        ``out`` (a tensor of the box's shape, e.g. the box of the whole result) the outputs
        are written into it and it is returned; without, a view of the computed outputs
        when it can be (no copy).  ``origin``: the index of the box's first output in the
        whole output, per spatial axis (a backend whose arithmetic depends on where an
        output falls in its call computes each as the call on the whole input would)."""
        y = self.correlate(window, weight, spec, groups)
        y = y[(slice(None), slice(None), *(slice(None, None, s) for s in spec.stride))]
        y = y[(slice(None), slice(None), *(slice(f, f + n) for f, n in zip(first, out_shape)))]
        if bias is not None:
            y = y + bias.view(1, -1, *([1] * spec.ndim))
        return y if out is None else out.copy_(y)

    def single_node(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    spec: ConvSpec) -> torch.Tensor:
        """This backend on the whole input: the reference a split run of it is compared with."""
        from haloconv.compute.padding import pad_input

        x = pad_input(x, spec)  # the rest is the backend padding, applied like a tile's
        return self.compute(x, weight, bias, spec, spec.groups, None, (0,) * spec.ndim, spec.out_spatial,
                            origin=(0,) * spec.ndim)

    def label(self, torch_backend: object) -> str:
        """What computed the tiles, for reports."""
        return self.name

    def work(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], groups: int) -> dict[str, float]:
        """Operation counts of one tile (``window`` its input box shape, ``out`` its output
        box shape), keyed like ``default_rates``."""
        raise NotImplementedError

    def workspace_bytes(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], itemsize: int) -> int:
        """Bytes the backend holds beyond the window and the output while it computes a tile."""
        return 2 * math.prod(out) * itemsize

    def calibration(self, side: int) -> list[ConvSpec]:
        """Problems `haloconv calibrate` times to price the counts (``side``: a scale for
        their size); at least as many as there are counts, differing in their mix."""
        return []

    def concurrency_probe(self) -> tuple[tuple, tuple] | None:
        """(input shape, weight shape) `haloconv calibrate` runs on n processes at once to
        measure how this backend scales with busy cores; None: torch filters' curve."""
        return None


def as_array(t) -> np.ndarray:
    """A tensor's values as a numpy array (an array as it is)."""
    return t if isinstance(t, np.ndarray) else t.detach().cpu().numpy()


def dilated(weight, dilation: Sequence[int]):
    """The kernel (a tensor or an array) with d-1 zeros between taps: one dense kernel for
    methods that need one."""
    if all(d == 1 for d in dilation):
        return weight
    k = weight.shape[2:]
    shape = (*weight.shape[:2], *((n - 1) * d + 1 for n, d in zip(k, dilation)))
    out = np.zeros(shape, weight.dtype) if isinstance(weight, np.ndarray) else weight.new_zeros(shape)
    out[(slice(None), slice(None), *(slice(None, None, d) for d in dilation))] = weight
    return out


def padded(window, spec: ConvSpec):
    """The window (a tensor or an array) padded by the backend padding (zeros), as
    kernels.conv_tile's backend pads it."""
    if not any(spec.backend_pad):
        return window
    if isinstance(window, np.ndarray):
        return np.pad(window, [(0, 0), (0, 0), *((p, p) for p in spec.backend_pad)])
    import torch.nn.functional as F

    return F.pad(window, [p for p in reversed(spec.backend_pad) for _ in range(2)])


def is_filter(spec: ConvSpec) -> bool:
    """One input and one output channel per group: an image filter (single-channel or
    depthwise), as opposed to a layer that mixes channels."""
    return spec.in_channels == spec.out_channels == spec.groups


def effective_kernel(spec: ConvSpec) -> list[int]:
    """The kernel's reach per spatial axis, dilation included."""
    return [(k - 1) * d + 1 for k, d in zip(spec.kernel, spec.dilation)]
