"""Sizes and durations written as users write them ('2GB', '512MiB', '25GB/s', '5us'), read
the same way by the CLI and the Python API.  Pure Python."""

from __future__ import annotations

BYTES = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def quantity(text: str, units: dict, name: str) -> float:
    """A positive number with one of ``units`` (a trailing '/s' ignored), in the base unit;
    ValueError naming ``name`` otherwise."""
    t = text.strip().lower().removesuffix("/s")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"{name} must be a number with a unit ({', '.join(k for k in units if k)}), "
                         f"got {text!r}") from None
    if unit not in units or value <= 0:
        raise ValueError(f"{name} must be a positive number with a unit ({', '.join(k for k in units if k)}), "
                         f"got {text!r}")
    return value * units[unit]


def byte_count(value: object, name: str) -> int:
    """Bytes given as a positive int or a size such as '1GB' or '512MiB'."""
    if isinstance(value, str):
        return int(quantity(value, BYTES, name))
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int of bytes or a size such as '1GB', got {value!r}")
    return value
