"""scipy.ndimage's arguments, read and checked as scipy reads them (its _ni_support), with
its error types and messages: the one place the haloconv.ndimage functions and their Dask
path (lazy.py) take them from."""

from __future__ import annotations

import numbers
import operator
import warnings
from collections.abc import Iterable

import numpy as np

from haloconv.tiling.spec import SCIPY_MODES


def haloconv_mode(mode, cval):
    """scipy's ``mode`` (and ``cval``) as haloconv's padding mode: a name, or for 'constant'
    the value itself (0 is 'zeros', ConvSpec)."""
    if not isinstance(mode, str) or mode not in SCIPY_MODES:
        raise RuntimeError("boundary mode not supported") if isinstance(mode, str) else TypeError(
            f"mode must be one of {sorted(SCIPY_MODES)}, got {mode!r}")
    if SCIPY_MODES[mode] != "constant":
        return SCIPY_MODES[mode]
    if np.iscomplexobj(cval):
        raise ValueError("Cannot provide a complex-valued cval when the input is real.")
    return float(cval)


def holds(dtype, value) -> bool:
    """Whether ``dtype`` holds ``value`` exactly."""
    with np.errstate(all="ignore"):
        return bool(np.array(value).astype(dtype) == value)


def new_output(output, input: np.ndarray, complex_output: bool = False) -> np.ndarray:
    """The array the result goes to, made as scipy.ndimage makes it (its
    _ni_support._get_output): a new one of input's dtype (complex when
    ``complex_output``), of a given dtype, or ``output`` itself."""
    shape = input.shape
    if output is None:
        dtype = np.promote_types(input.dtype, np.complex64) if complex_output else input.dtype
        return np.zeros(shape, dtype)
    if isinstance(output, type | np.dtype):
        if complex_output and np.dtype(output).kind != "c":
            warnings.warn("promoting specified output dtype to complex", stacklevel=3)
            output = np.promote_types(output, np.complex64)
        return np.zeros(shape, output)
    if isinstance(output, str):
        dtype = np.dtype(output)
        if complex_output and dtype.kind != "c":
            raise RuntimeError("output must have complex dtype")
        if not issubclass(dtype.type, np.number):
            raise RuntimeError("output must have numeric dtype")
        return np.zeros(shape, dtype)
    output = np.asarray(output)
    if output.shape != shape:
        raise RuntimeError("output shape not correct")
    if complex_output and output.dtype.kind != "c":
        raise RuntimeError("output must have complex dtype")
    return output


def as_int(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


def one_axis(axis, ndim: int, name: str) -> int:
    a = as_int(axis, name)
    if not -ndim <= a < ndim:
        raise ValueError(f"{name} {a} is out of bounds for an array of dimension {ndim}")
    return a % ndim


def axes_of(axes, ndim: int) -> list[int]:
    """The filtered axes, checked as scipy.ndimage checks them (its _ni_support._check_axes)."""
    if axes is None:
        return list(range(ndim))
    if np.isscalar(axes):
        axes = (operator.index(axes),)
    elif isinstance(axes, Iterable):
        axes = tuple(operator.index(a) for a in axes)
        for a in axes:
            if a < -ndim or a > ndim - 1:
                raise ValueError(f"specified axis: {a} is out of range")
        axes = tuple(a % ndim for a in axes)
    else:
        raise ValueError("axes must be an integer, iterable of integers, or None")
    if len(set(axes)) != len(axes):
        raise ValueError("axes must be unique")
    return list(axes)


def per_axis(value, n: int) -> list:
    """One value per axis, from one value or a sequence of ``n`` (scipy.ndimage's
    _ni_support._normalize_sequence)."""
    if isinstance(value, str) or not np.iterable(value):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise RuntimeError("sequence argument must have length equal to input rank")
    return value


def invalid_origin(origin: int, k: int) -> bool:
    return origin < -(k // 2) or origin > (k - 1) // 2


def gaussian_radius(sigma, truncate: float, radius) -> int:
    """A Gaussian kernel's radius, as scipy.ndimage.gaussian_filter1d takes it: ``radius``,
    else ``truncate`` standard deviations rounded."""
    lw = int(truncate * float(sigma) + 0.5) if radius is None else radius
    if not isinstance(lw, numbers.Integral) or lw < 0:
        raise ValueError("Radius must be a nonnegative integer.")
    return lw
