"""The compute backends: how a tile's output box is computed from its window.

Each module of this package (besides ``base``) defines one backend as ``BACKEND``, a
``base.Backend``: its rules, its compute, its guarantee, its operation counts and the
problems calibrate prices them on.  The registry below finds them, so adding a backend is
adding one module here (docs/architecture.md, "Where a change goes"); the planner, the
engines, the cost model, calibrate and the CLI all read them through this registry."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from haloconv.compute.backends.base import Backend, is_filter
from haloconv.tiling.spec import ConvSpec

if TYPE_CHECKING:
    import torch


def _discover() -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        backend = importlib.import_module(f"{__name__}.{info.name}").BACKEND
        if backend.name in found:
            raise RuntimeError(f"two compute backends named {backend.name!r}")
        found[backend.name] = backend
    # torch first: the default, and the reference the others are compared with
    return {name: found[name] for name in sorted(found, key=lambda n: (n != "torch", n))}


REGISTRY = _discover()
BACKENDS = tuple(REGISTRY)  # the names a Plan's backend may take ('auto' resolves to one of them)

__all__ = ["BACKENDS", "REGISTRY", "Backend", "check", "compute", "default_for", "get", "label", "single_node",
           "supported", "unsupported"]


def get(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {name!r}") from None


def unsupported(name: str, spec: ConvSpec, weight: torch.Tensor | None = None) -> str | None:
    """Why backend ``name`` cannot run ``spec`` (with the filter values ``weight``, when
    given; None when it can)."""
    if name not in REGISTRY:
        return f"backend must be one of {BACKENDS} or 'auto', got {name!r}"
    b = REGISTRY[name]
    why = b.unsupported(spec)
    return why if why is not None or weight is None else b.refuses(weight)


def check(name: str, spec: ConvSpec, weight: torch.Tensor | None = None) -> None:
    why = unsupported(name, spec, weight)
    if why is not None:
        raise ValueError(why)


def supported(spec: ConvSpec, weight: torch.Tensor | None = None) -> list[str]:
    """The backends that can run ``spec`` (the candidates of backend='auto'); those that
    depend on the filter's values only when ``weight`` is given and they take it."""
    return [name for name, b in REGISTRY.items()
            if unsupported(name, spec, weight) is None and (weight is not None or not b.needs_values)]


def default_for(spec: ConvSpec) -> str:
    """The backend when the caller names none: the fastest one the cost model knows
    ('auto') for a filter — one input and one output channel per group, what image users
    run and compare with OpenCV — and torch, bit for bit, for layers that mix channels,
    where bitwise-torch is what a CNN's user wants."""
    return "auto" if is_filter(spec) else "torch"


def label(name: str, torch_backend: object) -> str:
    """What computed the tiles, for reports: torch's conv backend, or the backend's name."""
    return get(name).label(torch_backend)


def single_node(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                spec: ConvSpec) -> torch.Tensor:
    """Backend ``name`` on the whole input: the reference a split run of it is compared with."""
    check(name, spec)
    return get(name).single_node(x, weight, bias, spec)
