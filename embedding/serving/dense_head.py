"""The dense part of a DCNModel (dense MLP, cross layers, over MLP, logit) as plain tensor calls.

At serving batch sizes the model is bound by Python, not arithmetic: TorchRec's `MLP` wraps each
layer in `Sequential` -> `Perceptron` -> `nn.Linear`, and every `nn.Module.__call__` (hooks, forward
dispatch) costs about as much as the small matmul under it. `DenseHead` takes the module's weight
tensors once (weights already transposed) and calls the aten ops `F.linear` dispatches to
(`addmm`, `mm`) in the same order, so its logits are bit-identical to `DCNModel`'s for the same
embedding output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP

from embedding.model import DCNModel

Layer = tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def _layers(mlp: MLP | None) -> list[Layer]:
    """(bias, transposed weight, activation) per layer: `F.linear(x, w, b)` is `addmm(b, x, w.t())` on 2-D x."""
    if mlp is None:
        return []
    layers = []
    for perceptron in mlp._mlp:
        linear = perceptron._linear
        if linear.bias is None:
            raise TypeError("DenseHead needs layers with a bias")
        layers.append((linear.bias, linear.weight.t(), perceptron._activation_fn))
    return layers


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
            []
            if cross is None
            else [(v.t(), w.t(), b) for v, w, b in zip(cross.V_kernels, cross.W_kernels, cross.bias, strict=True)]
        )
        self.over_layers = _layers(model.over_arch)
        self.logit_bias, self.logit_weight_t = model.logit.bias, model.logit.weight.t()

    def __call__(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        if self.dense_layers:
            for bias, weight_t, activation in self.dense_layers:
                dense = activation(torch.addmm(bias, dense, weight_t))
            x = torch.cat([sparse, dense], dim=1)
        elif self.pass_dense and dense.shape[1]:
            x = torch.cat([sparse, dense], dim=1)
        else:
            x = sparse
        if self.cross:  # as LowRankCrossNet.forward
            x0 = x
            for v_t, w_t, b in self.cross:
                x = x0 * (torch.mm(torch.mm(x, v_t), w_t) + b) + x
        for bias, weight_t, activation in self.over_layers:
            x = activation(torch.addmm(bias, x, weight_t))
        return torch.addmm(self.logit_bias, x, self.logit_weight_t).squeeze(1)
