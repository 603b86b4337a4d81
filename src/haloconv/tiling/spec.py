"""ConvSpec: the arguments of one convolution, validated and normalised.

Semantics follow torch.nn.Conv{1,2,3}d exactly.  Nothing here needs torch, so a Plan can
be made for shapes alone (e.g. on a laptop, for a cluster run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from haloconv.tiling import geometry

# torch's four, then 'symmetric' (scipy.ndimage's 'reflect': mirrored about the edge, the edge
# pixel repeated) and 'constant' (a value other than 0, given as padding_mode=<number>);
# geometry.padding_runs says what each reads
PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "symmetric", "constant")
# scipy.ndimage's names for the same modes ('constant' with cval=0 is 'zeros')
SCIPY_MODES = {"constant": "constant", "grid-constant": "constant", "mirror": "reflect", "nearest": "replicate",
               "wrap": "circular", "grid-wrap": "circular", "reflect": "symmetric", "grid-mirror": "symmetric"}
IntOrTuple = int | Sequence[int]


def _is_int(v: object) -> bool:
    """An int, numpy's integers too, but not a bool."""
    return not isinstance(v, bool) and hasattr(v, "__index__") and not isinstance(v, (list, tuple))


def _tuple(name: str, value: IntOrTuple, ndim: int, minimum: int) -> tuple[int, ...]:
    """An int or 1 or ``ndim`` ints (numpy's integers too), each >= ``minimum``."""
    if _is_int(value):
        out = (int(value.__index__()),) * ndim
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        ints = [int(v.__index__()) for v in value]
        if len(ints) == 1:
            out = (ints[0],) * ndim
        elif len(ints) == ndim:
            out = tuple(ints)
        else:
            raise ValueError(f"{name} must have 1 or {ndim} entries, got {value!r}")
    else:
        raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}")
    if any(v < minimum for v in out):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def _index(name: str, value: object) -> int:
    """An int (numpy's integers too) that is not a bool."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value.__index__())


def _pairs(padding: object, ndim: int) -> bool:
    """Whether ``padding`` is a (before, after) pair per spatial axis."""
    return (isinstance(padding, (tuple, list)) and len(padding) == ndim
            and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding))


def _mode(padding_mode: object) -> tuple[str, float]:
    """(mode, value) from a padding_mode: a name, or a number (constant padding of that value)."""
    if isinstance(padding_mode, (int, float)) and not isinstance(padding_mode, bool) or (
            hasattr(padding_mode, "dtype") and getattr(padding_mode, "ndim", 1) == 0):
        value = float(padding_mode)
        if value != value:
            raise ValueError("padding_mode must not be NaN")
        return ("zeros", 0.0) if value == 0 else ("constant", value)
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES or padding_mode == "constant":
        hint = SCIPY_MODES.get(padding_mode) if isinstance(padding_mode, str) else None
        raise ValueError(
            f"padding_mode must be one of {PADDING_MODES[:-1]} or a number (constant padding), got {padding_mode!r}"
            + (" (give the value: padding_mode=cval)" if padding_mode == "constant" else "")
            + (f" (scipy.ndimage's {padding_mode!r} is {hint!r} here)" if hint and padding_mode != "constant" else ""))
    return padding_mode, 0.0


@dataclass(frozen=True)
class ConvSpec:
    """One convolution: shapes plus hyper-parameters, all per spatial axis.

    Made by ``ConvSpec.from_args`` from what torch.nn.functional.conv2d takes; ``Plan.spec``
    holds the one a plan was made for.

    Parameters
    ----------
    input_shape, weight_shape, bias_shape
        (N, C_in, *spatial), (C_out, C_in / groups, *kernel), (C_out,) or None.
    stride, padding, dilation, groups, padding_mode
        As torch.nn.functional.conv2d's (``from_args``; padding also 'same'/'valid', or a
        (before, after) pair per axis).  Beyond torch: padding_mode 'symmetric'
        (scipy.ndimage's 'reflect') or a number (the padding reads that value), and padding
        wider than the input under every mode (folded as scipy.ndimage extends a line).

    Attributes
    ----------
    output_shape : tuple of int
    pad_lo, pad_hi : tuple of int
        The padding before and after, per spatial axis.

    Examples
    --------
    >>> from haloconv import ConvSpec
    >>> s = ConvSpec.from_args((1, 3, 32, 30), (8, 3, 5, 5), None, stride=2, padding="valid")
    >>> s.output_shape, s.pad_lo
    ((1, 8, 14, 13), (0, 0))

    Notes
    -----
    ``pad_lo``/``pad_hi`` is the total padding on each side.  torch applies part of it
    as an explicit pad of the input and passes the rest (symmetric) to the conv backend;
    ``backend_pad`` records that symmetric part, because the exact-result kernels must
    present the backend with the same padding the single-node call uses.
    """

    input_shape: tuple[int, ...]  # (N, C_in, *spatial)
    weight_shape: tuple[int, ...]  # (C_out, C_in/groups, *kernel)
    has_bias: bool
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad_lo: tuple[int, ...]
    pad_hi: tuple[int, ...]
    backend_pad: tuple[int, ...]
    groups: int
    padding_mode: str
    padding_value: float = 0.0  # what padding_mode 'constant' reads

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_args(
        cls,
        input_shape: Sequence[int],
        weight_shape: Sequence[int],
        bias_shape: Sequence[int] | None = None,
        *,
        stride: IntOrTuple = 1,
        padding: IntOrTuple | str = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> ConvSpec:
        input_shape = tuple(int(s) for s in input_shape)
        weight_shape = tuple(int(s) for s in weight_shape)
        if len(input_shape) not in (3, 4, 5):
            raise ValueError(
                "x must have shape (N, C_in, *spatial) with 1, 2 or 3 spatial dims, "
                f"got shape {input_shape}"
            )
        ndim = len(input_shape) - 2
        if len(weight_shape) != ndim + 2:
            raise ValueError(
                f"weight must have shape (C_out, C_in/groups, *kernel) with {ndim} kernel "
                f"dims to match x of shape {input_shape}, got shape {weight_shape}"
            )
        if any(s < 1 for s in input_shape[1:]) or input_shape[0] < 1:
            raise ValueError(f"x must have no empty dimension, got shape {input_shape}")
        if any(s < 1 for s in weight_shape):
            raise ValueError(f"weight must have no empty dimension, got shape {weight_shape}")
        if isinstance(groups, bool) or not isinstance(groups, int):
            raise TypeError(f"groups must be an int, got {groups!r}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        c_in, c_out = input_shape[1], weight_shape[0]
        if c_in % groups:
            raise ValueError(f"groups={groups} must divide C_in={c_in} (x shape {input_shape})")
        if c_out % groups:
            raise ValueError(f"groups={groups} must divide C_out={c_out} (weight shape {weight_shape})")
        if weight_shape[1] * groups != c_in:
            raise ValueError(
                f"weight shape {weight_shape} expects C_in/groups={weight_shape[1]}, but x has "
                f"C_in={c_in} and groups={groups} (C_in/groups={c_in // groups})"
            )
        if bias_shape is not None and tuple(bias_shape) != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias_shape)}")
        padding_mode, padding_value = _mode(padding_mode)
        stride_t = _tuple("stride", stride, ndim, 1)
        dilation_t = _tuple("dilation", dilation, ndim, 1)
        kernel = weight_shape[2:]
        spatial = input_shape[2:]
        if isinstance(padding, str):
            if padding == "valid":
                lo = hi = (0,) * ndim
            elif padding == "same":
                if any(s != 1 for s in stride_t):
                    raise ValueError(
                        f"padding='same' is not supported for strided convolutions, got stride={stride!r}"
                    )
                total = [d * (k - 1) for d, k in zip(dilation_t, kernel)]
                lo = tuple(t // 2 for t in total)
                hi = tuple(t - t // 2 for t in total)
            else:
                raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        elif _pairs(padding, ndim):
            lo = tuple(_index("padding", a) for a, _ in padding)
            hi = tuple(_index("padding", b) for _, b in padding)
            if min(lo + hi) < 0:
                raise ValueError(f"padding must be >= 0, got {padding!r}")
        else:
            lo = hi = _tuple("padding", padding, ndim, 0)
        # torch pads the odd extra of 'same' explicitly and passes the rest to the backend;
        # every other mode is padded explicitly (and may be wider than the input: it folds)
        # (the backend's part is the padding before, so all the explicit part comes after)
        backend = (tuple(a if a <= b else 0 for a, b in zip(lo, hi)) if padding_mode == "zeros" else (0,) * ndim)
        spec = cls(
            input_shape=input_shape,
            weight_shape=weight_shape,
            has_bias=bias_shape is not None,
            stride=stride_t,
            dilation=dilation_t,
            pad_lo=lo,
            pad_hi=hi,
            backend_pad=backend,
            groups=groups,
            padding_mode=padding_mode,
            padding_value=padding_value,
        )
        for i in range(ndim):
            reach = geometry.effective_kernel(kernel[i], dilation_t[i])
            padded = spatial[i] + lo[i] + hi[i]
            if reach > padded:
                raise ValueError(
                    f"kernel reaches beyond the padded input on spatial axis {i}: kernel size "
                    f"{kernel[i]} with dilation {dilation_t[i]} spans {reach}, but the padded "
                    f"input is only {padded} long (size {spatial[i]} + padding {lo[i]}+{hi[i]})"
                )
        return spec

    # -- derived ------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.input_shape) - 2

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def in_channels(self) -> int:
        return self.input_shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.input_shape[2:]

    @property
    def kernel(self) -> tuple[int, ...]:
        return self.weight_shape[2:]

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple(
            geometry.output_length(n, k, s, d, lo, hi)
            for n, k, s, d, lo, hi in zip(
                self.spatial, self.kernel, self.stride, self.dilation, self.pad_lo, self.pad_hi
            )
        )

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_spatial)

    @property
    def filter_elements(self) -> int:
        """One output channel's filter: C_in / groups x the kernel's volume."""
        return self.in_channels // self.groups * math.prod(self.kernel)

    def unit_channels(self, u0: int, u1: int) -> tuple[tuple[int, int], tuple[int, int], int]:
        """(output channels, input channels, groups) of the channel units [u0, u1) a split
        by channels takes (partition.split_extents): whole groups of a grouped conv, else
        output channels that each read every input channel."""
        if self.groups > 1:
            cog, cig = self.out_channels // self.groups, self.in_channels // self.groups
            return (u0 * cog, u1 * cog), (u0 * cig, u1 * cig), u1 - u0
        return (u0, u1), (0, self.in_channels), 1

    def axis(self, i: int) -> geometry.Axis:
        """The 1-D geometry of spatial axis ``i``."""
        return geometry.Axis(
            length=self.spatial[i],
            kernel=self.kernel[i],
            stride=self.stride[i],
            dilation=self.dilation[i],
            pad_lo=self.pad_lo[i],
            pad_hi=self.pad_hi[i],
            backend_pad=self.backend_pad[i],
            mode=self.padding_mode,
        )

    def flops(self, batch: int | None = None, out_channels: int | None = None,
              out_spatial: Sequence[int] | None = None) -> int:
        """Multiply-adds x2 of the whole conv, or of a sub-box of its output."""
        n = self.batch if batch is None else batch
        co = self.out_channels if out_channels is None else out_channels
        sp = self.out_spatial if out_spatial is None else out_spatial
        vol = 1
        for v in sp:
            vol *= v
        k = 1
        for v in self.kernel:
            k *= v
        return 2 * n * co * (self.in_channels // self.groups) * vol * k
