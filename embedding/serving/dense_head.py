"""The dense part of a DCNModel (dense MLP, cross layers, over MLP, logit) as plain tensor calls.

At serving batch sizes the model is bound by Python, not arithmetic: TorchRec's `MLP` wraps each
layer in `Sequential` -> `Perceptron` -> `nn.Linear`, and every `nn.Module.__call__` (hooks, forward
dispatch) costs about as much as the small matmul under it. `DenseHead` takes the module's weight
tensors once and calls the same `torch.nn.functional` ops in the same order, so its logits are
bit-identical to `DCNModel`'s for the same embedding output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F  # noqa: N812
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP

from embedding.model import DCNModel

Layer = tuple[torch.Tensor, torch.Tensor | None, Callable[[torch.Tensor], torch.Tensor]]


def _layers(mlp: MLP | None) -> list[Layer]:
    if mlp is None:
        return []
    return [(p._linear.weight, p._linear.bias, p._activation_fn) for p in mlp._mlp]


class DenseHead:
    """Logits [batch] from the pooled sparse embeddings [batch, width] and dense features [batch, n_dense].

    Holds references to the module's tensors (not copies): build a new head for a new module.
    """

    def __init__(self, model: DCNModel) -> None:
        cross = model.cross
        if cross is not None and type(cross) is not LowRankCrossNet:
            raise TypeError(f"cross layers of type {type(cross).__name__}; DenseHead knows LowRankCrossNet")
        self.dense_layers = _layers(model.dense_arch)
        self.pass_dense = model.dense_arch is None
        self.cross: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (
            [] if cross is None else list(zip(cross.V_kernels, cross.W_kernels, cross.bias, strict=True))
        )
        self.over_layers = _layers(model.over_arch)
        self.logit_weight, self.logit_bias = model.logit.weight, model.logit.bias

    def __call__(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        if self.dense_layers:
            for weight, bias, activation in self.dense_layers:
                dense = activation(F.linear(dense, weight, bias))
            x = torch.cat([sparse, dense], dim=1)
        elif self.pass_dense and dense.shape[1]:
            x = torch.cat([sparse, dense], dim=1)
        else:
            x = sparse
        if self.cross:  # as LowRankCrossNet.forward
            x0 = x
            for v, w, b in self.cross:
                x = x0 * (F.linear(F.linear(x, v), w) + b) + x
        for weight, bias, activation in self.over_layers:
            x = activation(F.linear(x, weight, bias))
        return F.linear(x, self.logit_weight, self.logit_bias).squeeze(1)
