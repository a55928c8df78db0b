"""teachcompute_ext.nn.FusedLinear: a torch.nn.Linear (same constructor,
initialization and state_dict, so a Linear's state_dict loads into it and back)
followed by an activation, both computed by teachcompute_ext.fused_linear."""

import torch

from ..ops.matmul import ACTIVATIONS, fused_linear


class FusedLinear(torch.nn.Linear):
    """act(x @ weight.T + bias), act one of none, relu, gelu (erf), gelu_tanh, silu."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, activation: str = "none", device=None, dtype=None
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"teachcompute_ext.nn.FusedLinear: unknown activation '{activation}' (expected one of "
                f"{', '.join(ACTIVATIONS)})"
            )
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fused_linear(input, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"
