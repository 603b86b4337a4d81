"""Backend 'torch': torch's own convolution on each tile's window (kernels.conv_tile), with
the conv backend the single-node call selects — bit for bit the single-node torch call.
Its speed depends on the shape far more than one rate per count can say, so the cost model
prices it from measured tables (costmodel/cost.py, Profile.torch_seconds)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from haloconv.compute.backends.base import Backend
from haloconv.tiling.spec import ConvSpec

if TYPE_CHECKING:
    import torch


# torch's conv backends (torch._C._ConvBackend) as users know them
DISPLAY = {
    "Mkldnn": "oneDNN", "MkldnnEmpty": "oneDNN", "Slow2d": "im2col + GEMM", "Slow3d": "vol2col + GEMM",
    "SlowDilated2d": "dilated im2col + GEMM", "SlowDilated3d": "dilated vol2col + GEMM", "Cudnn": "cuDNN",
    "CudaDepthwise2d": "CUDA depthwise", "CudaDepthwise3d": "CUDA depthwise", "Miopen": "MIOpen",
    "MiopenDepthwise": "MIOpen depthwise", "NnpackSpatial": "NNPACK", "Xnnpack2d": "XNNPACK",
    "Winograd3x3Depthwise": "Winograd depthwise", "Mps": "MPS", "Empty": "empty input",
}


class TorchConv(Backend):
    name = "torch"
    exact = True
    guarantee = "bitwise equal to torch's single-node convolution"

    def compute(self, window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec,
                groups: int, torch_backend: object, first: Sequence[int], out_shape: Sequence[int],
                out: torch.Tensor | None = None, *, origin: Sequence[int]) -> torch.Tensor:
        from haloconv.compute import kernels

        y = kernels.conv_tile(window, weight, bias, spec, groups, torch_backend, first, out_shape)
        return y if out is None else out.copy_(y)

    def single_node(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    spec: ConvSpec) -> torch.Tensor:
        from haloconv.compute import kernels

        return kernels.single_node(x, weight, bias, spec)

    def label(self, torch_backend: object) -> str:
        """'torch (oneDNN)', 'torch (im2col + GEMM)', ...: which of torch's convolutions ran."""
        from haloconv.compute import kernels

        if torch_backend is None:
            return "torch"
        name = kernels.backend_name(torch_backend)
        return f"torch ({DISPLAY.get(name, name)})"

    def workspace_bytes(self, spec: ConvSpec, window: Sequence[int], out: Sequence[int], itemsize: int) -> int:
        """oneDNN works in a channel-blocked layout, channels padded to 16: a single-channel
        conv peaks at about 16 floats per pixel beyond its input and output; counted for
        the window and the output both, to stay on the safe side."""
        pad16 = lambda c: -(-c // 16) * 16  # noqa: E731
        return window[0] * (pad16(window[1]) * math.prod(window[2:]) + pad16(out[1]) * math.prod(out[2:])) * itemsize


BACKEND = TorchConv()
