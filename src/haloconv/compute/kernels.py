"""Local compute of one tile with torch's direct convolution, bit for bit like the
single-node call.

torch picks a conv backend (oneDNN, or im2col + MKL GEMM) from the *whole* problem's
shapes, the thread count and the padding it passes down.  A tile convolved with a plain
``F.conv2d`` may get another backend or another oneDNN algorithm and round differently.
So a tile is computed with the backend the single-node call selects, with the same
backend padding (see geometry.Axis.compute_window), and MKL runs in its strict
reproducible mode, where a GEMM's rounding does not depend on matrix size or threads.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from haloconv.compute.padding import pad_input
from haloconv.tiling.geometry import output_length
from haloconv.tiling.spec import ConvSpec

_B = torch._C._ConvBackend
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SUPPORTED_DTYPES = (torch.float32, torch.float64)

# -- MKL reproducibility ------------------------------------------------------------------
_MKL_CBWR_AUTO = 2
_MKL_CBWR_STRICT = 0x10000
_MKL_CBWR_ALL = ~0


def _mkl_lib() -> ctypes.CDLL | None:
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path)
        lib.mkl_serv_cbwr_get  # noqa: B018 - raises AttributeError without MKL
        return lib
    except (OSError, AttributeError):
        return None


def _enable_mkl_strict() -> str:
    """Put MKL in strict CNR mode.  Returns 'strict', 'no-mkl' or 'unavailable'.

    This must happen before MKL's first call in the process; afterwards MKL refuses.
    Set HALOCONV_MKL_STRICT=0 to leave MKL alone.
    """
    lib = _mkl_lib()
    if lib is None:
        return "no-mkl"
    if lib.mkl_serv_cbwr_get(_MKL_CBWR_ALL) & _MKL_CBWR_STRICT:
        return "strict"
    if os.environ.get("HALOCONV_MKL_STRICT", "1") == "0":
        return "unavailable"
    rc = lib.mkl_serv_cbwr_set(_MKL_CBWR_AUTO | _MKL_CBWR_STRICT)
    return "strict" if rc == 0 else "unavailable"


MKL_MODE = _enable_mkl_strict()


def _gemm_exact() -> bool:
    """Whether this process's GEMM rounds each output the same whatever the matrix width and
    the thread count: what the im2col + GEMM backends (every float64 conv, some float32 1x1,
    3-D and dilated ones) need for a tile to be bitwise the single-node call.  MKL's strict
    mode gives it on Intel CPUs; on others MKL ignores the mode (seen on an AMD EPYC: the
    first 500 of 1073 columns of a float64 GEMM, computed alone, differed in 46 of 2000
    outputs by an ulp, and the whole one at 1 thread from 2 threads)."""
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for dtype in (torch.float64, torch.float32):
            a = torch.randn(8, 27, generator=g, dtype=dtype)
            b = torch.randn(27, 1100, generator=g, dtype=dtype)
            full = a @ b
            if any(not torch.equal(a @ b[:, :n].contiguous(), full[:, :n]) for n in (500, 290, 64, 9)):
                return False
            torch.set_num_threads(1)
            if not torch.equal(a @ b, full):
                return False
            torch.set_num_threads(threads)
        return True
    finally:
        torch.set_num_threads(threads)


GEMM_EXACT = MKL_MODE != "unavailable" and _gemm_exact()
# where GEMM_EXACT is False: how close a tile computed by GEMM (im2col + GEMM: every float64
# conv; float32 ones that torch does not run on oneDNN) is to the single-node call, x max|y|
GEMM_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
GEMM_BACKENDS = (_B.Slow2d, _B.Slow3d, _B.SlowDilated2d, _B.SlowDilated3d)
_warned_mkl = False


def matches_single_node(y: torch.Tensor, ref: torch.Tensor, gemm: bool = False) -> bool:
    """``y`` equals the single-node result ``ref``: bit for bit (NaNs where ``ref`` has
    them), or — on a machine whose GEMM rounds by size (GEMM_EXACT False), for a conv torch
    runs as im2col + GEMM (every float64 one; a float32 one when ``gemm``, see GEMM_BACKENDS)
    — within GEMM_RTOL x max|ref|."""
    if y.shape != ref.shape or y.dtype != ref.dtype:
        return False
    nan_y, nan_r = torch.isnan(y), torch.isnan(ref)
    if not torch.equal(nan_y, nan_r):
        return False
    if torch.equal(y[~nan_y], ref[~nan_r]):
        return True
    if GEMM_EXACT or y.dtype not in GEMM_RTOL or (y.dtype != torch.float64 and not gemm):
        return False
    scale = max(1.0, ref[~nan_r].abs().max().item()) if ref.numel() else 1.0
    return (y[~nan_y] - ref[~nan_r]).abs().max().item() <= GEMM_RTOL[y.dtype] * scale


def _check_mkl(backend: object) -> None:
    global _warned_mkl
    if backend == _B.Mkldnn or _warned_mkl or (MKL_MODE != "unavailable" and GEMM_EXACT):
        return
    _warned_mkl = True
    why = ("haloconv could not put MKL in strict reproducible mode (MKL was used before haloconv "
           "was imported; import haloconv before using torch, or set MKL_CBWR=AUTO,STRICT)"
           if MKL_MODE == "unavailable" else
           "this machine's GEMM rounds by matrix size and thread count (MKL's reproducible mode "
           "has no effect on this CPU)")
    warnings.warn(
        f"{why}: this convolution runs on im2col + GEMM, so tiles may differ from the "
        "single-node call in the last bits (within kernels.GEMM_RTOL x max|y|: 1e-12 in float64, "
        "1e-5 in float32); oneDNN's convolutions stay bit for bit.",
        RuntimeWarning,
        stacklevel=3,
    )


# -- the reference ------------------------------------------------------------------------
def _explicit_pad(spec: ConvSpec) -> list[int] | None:
    """F.pad argument torch applies before the backend (last axis first), or None."""
    extra_lo = [lo - q for lo, q in zip(spec.pad_lo, spec.backend_pad)]
    extra_hi = [hi - q for hi, q in zip(spec.pad_hi, spec.backend_pad)]
    if not any(extra_lo) and not any(extra_hi):
        return None
    pad: list[int] = []
    for lo, hi in zip(reversed(extra_lo), reversed(extra_hi)):
        pad += [lo, hi]
    return pad


def single_node(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """What torch.nn.Conv{1,2,3}d computes on the whole input — the reference."""
    x = pad_input(x, spec)
    return _CONV[spec.ndim](x, weight, bias, spec.stride, spec.backend_pad, spec.dilation, spec.groups)


def select_backend(spec: ConvSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> object:
    """The backend torch picks for the single-node call, in this thread's settings."""
    shape = list(spec.input_shape)
    pad = _explicit_pad(spec)
    if pad is not None:
        for i in range(spec.ndim):
            shape[2 + i] += pad[2 * (spec.ndim - 1 - i)] + pad[2 * (spec.ndim - 1 - i) + 1]
    # zero-stride stand-ins: the choice depends on shapes, dtype and device only.  A 1-D
    # conv's selection makes its input contiguous: an expanded stand-in would be written out
    # in full (a copy of the whole input per call, on threads that then spin on the cores
    # the tiles compute on); an uninitialised one is contiguous already, never touched
    xs = x.new_empty(shape) if spec.ndim == 1 else x.new_empty(()).expand(shape)
    ws = weight.new_empty(()).expand(spec.weight_shape)  # the whole weight, also when given a tile's filters
    bs = None if bias is None else bias.new_empty(()).expand(spec.out_channels)
    return torch._C._select_conv_backend(
        xs, ws, bs, list(spec.stride), list(spec.backend_pad), list(spec.dilation),
        False, [0] * spec.ndim, spec.groups, None,
    )


def backend_name(backend: object) -> str:
    """'Mkldnn', 'Slow2d', ...: the name of a torch._C._ConvBackend."""
    return str(backend).rsplit(".", 1)[-1]


def backend_of(name: str) -> object:
    """The torch._C._ConvBackend named ``name`` (the inverse of backend_name: a command
    carries the name, the worker computes with the backend)."""
    return getattr(_B, name)


# -- one tile -----------------------------------------------------------------------------
def conv_tile(
    window: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    groups: int,
    backend: object,
    first: Sequence[int],
    out_shape: Sequence[int],
) -> torch.Tensor:
    """Convolve one tile's window with ``backend`` and crop its kept outputs.

    ``window`` is the tile's input (source window of geometry.Axis.compute_window),
    ``first``/``out_shape`` the kept output range per spatial axis.
    """
    _check_mkl(backend)
    stride, dilation, pad = list(spec.stride), list(spec.dilation), list(spec.backend_pad)
    x, w = window, weight
    if spec.ndim == 1:  # torch runs 1-D convs as 2-D with a unit height
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        stride, dilation, pad = [1, *stride], [1, *dilation], [0, *pad]
    kernel = list(w.shape[2:])
    cog = w.shape[0] // groups
    padded_group = backend in (_B.Mkldnn, _B.Slow3d) and groups == 1 and spec.groups > 1
    if padded_group:
        # oneDNN runs grouped (e.g. depthwise) convs with other algorithms than plain
        # ones; a tile holding a single group gets an all-zero second group to stay grouped
        x = torch.cat([x, torch.zeros_like(x)], 1)
        w = torch.cat([w, torch.zeros_like(w)], 0)
        bias = None if bias is None else torch.cat([bias, torch.zeros_like(bias)])
        groups = 2
    if backend == _B.Mkldnn:
        y = torch.ops.aten.mkldnn_convolution(
            x.contiguous(), w.contiguous(), None if bias is None else bias.contiguous(),
            pad, stride, dilation, groups,
        )
    elif backend == _B.Slow3d:  # handles groups itself (inferred from the weight)
        y = torch.ops.aten.slow_conv3d_forward(x, w, kernel, bias, stride, pad)
    elif backend in (_B.Slow2d, _B.SlowDilated2d, _B.SlowDilated3d):
        x, w = x.contiguous(), w.contiguous()
        if groups == 1:
            y = _slow(backend, x, w, bias, kernel, stride, pad, dilation)
        else:
            cig, cog = x.shape[1] // groups, w.shape[0] // groups
            y = torch.cat(
                [
                    _slow(
                        backend,
                        x.narrow(1, g * cig, cig).contiguous(),
                        w.narrow(0, g * cog, cog).contiguous(),
                        None if bias is None else bias.narrow(0, g * cog, cog).contiguous(),
                        kernel, stride, pad, dilation,
                    )
                    for g in range(groups)
                ],
                1,
            )
    else:
        # other backends (CUDA, NNPACK, ...): torch chooses for the tile; not bitwise-checked
        y = torch.ops.aten.convolution(x, w, bias, stride, pad, dilation, False, [0] * len(pad), groups)
    if padded_group:
        y = y[:, :cog]
    if spec.ndim == 1:
        y = y.squeeze(2)
    return y[(slice(None), slice(None), *(slice(f, f + n) for f, n in zip(first, out_shape)))]


def full_grad(window_shape: Sequence[int], grad: torch.Tensor, spec: ConvSpec, first: Sequence[int]) -> torch.Tensor:
    """``grad`` (of a tile's kept outputs) placed among all the outputs its window computes,
    zeros elsewhere; ``grad`` itself when it is all of them.  A caller that calls
    conv_tile_backward more than once on one tile makes it once."""
    full = [output_length(n, k, s, d, p, p)
            for n, k, s, d, p in zip(window_shape[2:], spec.kernel, spec.stride, spec.dilation, spec.backend_pad)]
    if list(grad.shape[2:]) == full:
        return grad
    g_full = grad.new_zeros((*grad.shape[:2], *full))
    g_full[(slice(None), slice(None), *(slice(f, f + n) for f, n in zip(first, grad.shape[2:])))] = grad
    return g_full


def conv_tile_backward(
    window: torch.Tensor,
    weight: torch.Tensor,
    grad: torch.Tensor,
    spec: ConvSpec,
    groups: int,
    first: Sequence[int],
    needs: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Adjoint of conv_tile: (grad of the window, of the tile's filters, of its bias) from
    ``grad``, the gradient of the tile's kept outputs.  ``needs``: which of the three to
    compute.  The kept outputs sit at ``first`` among those the window computes; the
    others get zero gradient.  Summed over the tiles (the window's pieces added into their
    owners' boxes, see engines.gradients.add_window_grad), these are the single-node gradients."""
    pad = list(spec.backend_pad)
    grad = full_grad(window.shape, grad, spec, first)
    g_window, gw, gb = torch.ops.aten.convolution_backward(
        grad.contiguous(), window, weight, [weight.shape[0]] if needs[2] else None,
        list(spec.stride), pad, list(spec.dilation), False, [0] * spec.ndim, groups,
        [bool(needs[0]), bool(needs[1]), bool(needs[2])],
    )
    return g_window, gw, gb


def _slow(backend, x, w, b, kernel, stride, pad, dilation) -> torch.Tensor:
    if backend == _B.Slow2d:
        return torch.ops.aten._slow_conv2d_forward(x, w, kernel, b, stride, pad)
    if backend == _B.SlowDilated2d:
        return torch.ops.aten.slow_conv_dilated2d(x, w, kernel, b, stride, pad, dilation)
    return torch.ops.aten.slow_conv_dilated3d(x, w, kernel, b, stride, pad, dilation)
