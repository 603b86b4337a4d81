"""Per-axis index math — the only place in haloconv where indices are computed.

One spatial axis of length L, kernel k, stride s, dilation d, padding lo/hi.  Source
coordinates are input indices; indices outside [0, L) are padding, read as zeros or mapped
back into [0, L) by the padding mode.  All functions are pure and need no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A tile computes at least this many outputs per axis (or all of them), the extra ones on
# zeros and dropped: oneDNN's GEMM path rounds a single-output block (a GEMV) differently
# from the same output inside a larger block of the single-node call.
MIN_COMPUTE_OUTPUTS = 4
# A 1-D conv's tile computes a multiple of this many outputs (the extra ones on zeros,
# dropped): oneDNN runs a 1-D conv as a 2-D one of height 1, and is much slower on an
# output length that is not a multiple of 16 (benchmarks/threads_engine.py shows it); the
# kept outputs are the same bits.
ROW_ALIGN_1D = 16


def compute_align(ndim: int) -> int:
    """Multiple of outputs a tile's window computes along an axis (Axis.compute_window)."""
    return ROW_ALIGN_1D if ndim == 1 else 1


def effective_kernel(kernel: int, dilation: int) -> int:
    """Span of a dilated kernel: d*(k-1)+1."""
    return dilation * (kernel - 1) + 1


def output_length(length: int, kernel: int, stride: int, dilation: int, pad_lo: int, pad_hi: int) -> int:
    """O = floor((L + p_lo + p_hi - d*(k-1) - 1) / s) + 1, as torch."""
    return (length + pad_lo + pad_hi - effective_kernel(kernel, dilation)) // stride + 1


def split_extent(
    extent: int, parts: int, weights: Sequence[float] | None = None, allow_empty: bool = False
) -> list[tuple[int, int]]:
    """Split [0, extent) into ``parts`` contiguous non-empty ranges.

    Even split: sizes differ by at most one, larger ones first (like numpy.array_split).
    Weighted: sizes proportional to ``weights`` (relative speeds), each at least 1.
    ``allow_empty``: more parts than indices is allowed; the trailing parts (even) or the
    lightest ones (weighted, by rounding) are then empty.
    """
    if parts < 1 or (parts > extent and not allow_empty):
        raise ValueError(f"cannot split an extent of {extent} into {parts} non-empty parts")
    if weights is None:
        base, extra = divmod(extent, parts)
        bounds = [0]
        for i in range(parts):
            bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    else:
        if len(weights) != parts:
            raise ValueError(f"need {parts} weights, got {len(weights)}")
        total = float(sum(weights))
        # cumulative rounding, then push apart so every part keeps at least one index
        bounds = [0]
        acc = 0.0
        for w in weights[:-1]:
            acc += w
            bounds.append(round(extent * acc / total))
        bounds.append(extent)
        if parts <= extent:
            for i in range(1, parts):
                bounds[i] = max(bounds[i], bounds[i - 1] + 1)
            for i in range(parts - 1, 0, -1):
                bounds[i] = min(bounds[i], bounds[i + 1] - 1)
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def block_extent(extent: int, size: int) -> list[tuple[int, int]]:
    """Split [0, extent) into blocks of ``size`` (the last may be shorter): boundaries at
    multiples of ``size``, so blocks line up with the chunks of a chunked file."""
    if size < 1:
        raise ValueError(f"block size must be >= 1, got {size}")
    return [(a, min(a + size, extent)) for a in range(0, extent, size)]


@dataclass(frozen=True)
class Run:
    """A run of window positions [dst, dst+length) read from the source.

    step +1: source src, src+1, ...;  step -1: src, src-1, ... (reflect);
    step 0: the single index src repeated (replicate);  src None: zeros.
    """

    dst: int
    length: int
    src: int | None
    step: int

    @property
    def src_range(self) -> tuple[int, int]:
        """The source indices read, as a half-open range."""
        assert self.src is not None
        if self.step == 1:
            return self.src, self.src + self.length
        if self.step == -1:
            return self.src - self.length + 1, self.src + 1
        return self.src, self.src + 1

    def clip(self, lo: int, hi: int) -> Run | None:
        """The part of this run at window positions [lo, hi), or None."""
        u, v = max(self.dst, lo), min(self.dst + self.length, hi)
        if u >= v:
            return None
        src = None if self.src is None else self.src + self.step * (u - self.dst)
        return Run(u, v - u, src, self.step)

    def restrict(self, lo: int, hi: int) -> Run | None:
        """The part of this run whose source indices lie in [lo, hi), or None."""
        assert self.src is not None
        a, b = self.src_range
        u, v = max(a, lo), min(b, hi)
        if u >= v:
            return None
        if self.step == 1:
            return Run(self.dst + (u - self.src), v - u, u, 1)
        if self.step == -1:
            return Run(self.dst + (self.src - (v - 1)), v - u, v - 1, -1)
        return self


@dataclass(frozen=True)
class Axis:
    """The geometry of one spatial axis of one convolution."""

    length: int
    kernel: int
    stride: int
    dilation: int
    pad_lo: int
    pad_hi: int
    backend_pad: int  # the symmetric padding torch hands to the conv backend
    mode: str

    @property
    def span(self) -> int:
        return effective_kernel(self.kernel, self.dilation)

    @property
    def out_length(self) -> int:
        return output_length(self.length, self.kernel, self.stride, self.dilation, self.pad_lo, self.pad_hi)

    def needed(self, a: int, b: int) -> tuple[int, int]:
        """Source window [lo, hi) read by outputs [a, b); may extend into the padding."""
        return a * self.stride - self.pad_lo, (b - 1) * self.stride + self.span - self.pad_lo

    def owned(self, a: int, b: int) -> tuple[int, int]:
        """Input owned by the tile that computes outputs [a, b) (aligned ownership).

        Owned ranges of consecutive tiles partition [0, L): the first tile starts at 0,
        the last ends at L, and a border sits where the next tile's window starts.
        """
        lo = 0 if a == 0 else min(max(a * self.stride - self.pad_lo, 0), self.length)
        hi = self.length if b == self.out_length else min(max(b * self.stride - self.pad_lo, 0), self.length)
        return lo, hi

    def halo(self, a: int, b: int) -> tuple[int, int]:
        """(halo_lo, halo_hi): real data needed beyond the owned range; negative = unused."""
        n_lo, n_hi = self.needed(a, b)
        if self.mode in VALUE_MODES:
            n_lo, n_hi = max(n_lo, 0), min(n_hi, self.length)
        o_lo, o_hi = self.owned(a, b)
        return o_lo - n_lo, n_hi - o_hi

    def compute_window(self, a: int, b: int, align: int = 1) -> tuple[int, int, int]:
        """(lo, hi, first): the source window a tile hands to the conv backend, and the
        index of its first kept output.  ``align``: the window computes a multiple of that
        many outputs (ROW_ALIGN_1D), the extra ones at its end on zeros.

        Thin tiles compute at least MIN_COMPUTE_OUTPUTS outputs, and the window length
        matches the single-node input's modulo the stride; the extra outputs read window
        positions no kept output reads, which are left zero (nothing extra moves).
        torch passes ``backend_pad`` to the backend instead of padding the input, and the
        backend's algorithm (hence the rounding of the result) depends on that padding.  So
        a tile keeps the same backend padding and starts its window on a stride multiple;
        the leading ``first`` outputs it computes read only that padding or rows no kept
        output needs, and are dropped.  Window positions outside [0, L) hold zeros.
        """
        n_out = self.out_length
        grow = min(n_out, MIN_COMPUTE_OUTPUTS) - (b - a)
        a0, b0 = a, b
        if grow > 0:
            b = min(n_out, b + grow)
            a = max(0, b - max(MIN_COMPUTE_OUTPUTS, b0 - a0))
        q, s = self.backend_pad, self.stride
        # the input the single-node backend sees: L plus the explicit part of the padding
        ref_len = self.length + self.pad_lo + self.pad_hi - 2 * q
        if q == 0:
            lo, hi = self.needed(a, b)
            first = a0 - a
        else:  # zeros mode; pad_lo == q, so the explicit part is only at the high end
            start = max(0, a * s - q) // s
            first = a0 - start
            lo = start * s
            hi = max(min(self.length + self.pad_hi - q, (b - 1) * s - q + self.span), lo + 1)
        # same length modulo the stride as the single-node input, so the backend sees the
        # same trailing padding (or the same unused trailing input) and picks alike
        hi += (ref_len - (hi - lo)) % s
        computed = (hi - lo + 2 * q - self.span) // s + 1
        hi += (-computed) % align * s  # whole strides: the length modulo the stride stays
        return lo, hi, first

    def runs(self, lo: int, hi: int) -> list[Run]:
        """How window [lo, hi) reads the source: data runs and padding runs, in order.
        Padding wider than the input folds as many times as it takes (scipy.ndimage's
        extension of a line by a longer kernel): see ``padding_runs``."""
        L = self.length
        out: list[Run] = []
        if lo < min(hi, 0):
            out += padding_runs(lo, min(hi, 0), L, self.mode, lo)
        if max(lo, 0) < min(hi, L):
            out.append(Run(max(lo, 0) - lo, min(hi, L) - max(lo, 0), max(lo, 0), 1))
        if max(lo, L) < hi:
            out += padding_runs(max(lo, L), hi, L, self.mode, lo)
        return out


# the padding modes, by what a position p outside [0, L) reads (scipy.ndimage's name after the ':')
#   zeros / constant: a value (0, or the spec's padding_value)          ('constant', 'grid-constant')
#   replicate: the nearest edge               a a a | a b c d | d d d    ('nearest')
#   reflect:   mirrored about the edge pixel  d c b | a b c d | c b a    ('mirror'; torch's 'reflect')
#   symmetric: mirrored about the edge        c b a | a b c d | d c b    ('reflect', 'grid-mirror')
#   circular:  wrapped around                 b c d | a b c d | a b c    ('wrap', 'grid-wrap')
VALUE_MODES = ("zeros", "constant")


def source_index(p: int, length: int, mode: str) -> int | None:
    """The input index position ``p`` reads under ``mode`` (None: the padding value)."""
    if 0 <= p < length:
        return p
    if mode in VALUE_MODES:
        return None
    if mode == "replicate" or length == 1:
        return 0 if p < 0 else length - 1
    return _fold(p, length, mode)[0]


def _fold(p: int, length: int, mode: str) -> tuple[int, int, int]:
    """(source, step, positions until it turns): where position ``p`` falls in the period
    of a mode that reads the input back and forth (reflect, symmetric) or around
    (circular), for an input longer than 1.  A period of reflect or symmetric is an
    ascending stretch (the whole input) and a descending one (reflect from L-2 to 1,
    symmetric from L-1 to 0)."""
    if mode == "circular":
        return p % length, 1, length - p % length
    period = 2 * length - 2 if mode == "reflect" else 2 * length
    m = p % period
    if m < length:
        return m, 1, length - m
    return (period - m if mode == "reflect" else period - 1 - m), -1, period - m


def padding_runs(u: int, v: int, length: int, mode: str, origin: int = 0) -> list[Run]:
    """Runs for positions [u, v), all outside [0, length), at window positions counted from
    ``origin``: one run per stretch that reads the input in one direction (padding longer
    than the input reads it several times, back and forth or around)."""
    if mode in VALUE_MODES:
        return [Run(u - origin, v - u, None, 0)]
    if mode == "replicate" or length == 1:
        return [Run(u - origin, v - u, 0 if v <= 0 else length - 1, 0)]
    out = []
    p = u
    while p < v:
        src, step, n = _fold(p, length, mode)
        n = min(n, v - p)
        out.append(Run(p - origin, n, src, step))
        p += n
    return out
