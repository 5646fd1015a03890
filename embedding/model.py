"""The DCN-v2 style CTR model over any embedding method, shared by trainer and inference service.

    dense features -> dense MLP --+
                                  +-> concat -> low-rank cross layers -> over MLP -> logit
    sparse features -> embedding -+

`ModelConfig` is everything needed to rebuild the model besides the feature schema; it is stored
in checkpoints and export manifests as JSON.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.config import ModelConfig
from embedding.methods import EmbeddingMethod, build_method
from embedding.schema import FeatureSchema


class DCNModel(nn.Module):
    def __init__(self, schema: FeatureSchema, sparse: EmbeddingMethod, config: ModelConfig) -> None:
        super().__init__()
        self.schema = schema
        self.config = config
        self.sparse = sparse
        n_dense = len(schema.dense)
        self.dense_arch = MLP(n_dense, list(config.dense_arch)) if n_dense and config.dense_arch else None
        width = schema.total_width + (config.dense_arch[-1] if self.dense_arch else n_dense)
        self.cross = LowRankCrossNet(width, config.cross_layers, config.cross_rank) if config.cross_layers else None
        self.over_arch = MLP(width, list(config.over_arch)) if config.over_arch else None
        self.logit = nn.Linear(config.over_arch[-1] if config.over_arch else width, 1)

    def forward(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> torch.Tensor:
        """Logits [batch] for fingerprints `sparse` and dense features [batch, n_dense]."""
        parts = [self.sparse(sparse).values()]
        if self.dense_arch is not None:
            parts.append(self.dense_arch(dense))
        elif dense.shape[1]:
            parts.append(dense)
        x = torch.cat(parts, dim=1)
        if self.cross is not None:
            x = self.cross(x)
        if self.over_arch is not None:
            x = self.over_arch(x)
        return self.logit(x).squeeze(1)

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the embedding method's TorchRec tables (trained by the dense optimiser)."""
        table_params = {id(p) for p in self.sparse_table_parameters()}
        return [p for p in self.parameters() if id(p) not in table_params]

    def sparse_table_parameters(self) -> list[nn.Parameter]:
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        return [p for m in self.sparse.modules() if isinstance(m, EmbeddingBagCollection) for p in m.parameters()]


def build_model(schema: FeatureSchema, config: ModelConfig, device: str = "cpu") -> DCNModel:
    torch.manual_seed(config.seed)
    args = dict(config.method_args)
    if "device" not in args and device != "cpu":
        args["device"] = device
    sparse = build_method(config.method, schema, **args)
    return DCNModel(schema, sparse, config)
