"""The peer of the trainer's model written by hand in plain PyTorch: what a user would write.

DCN-v2 (low-rank cross layers) over ONE `nn.EmbeddingBag(num_rows, dim, sparse=True)` shared by all
sparse features (each feature's ids offset by a per-feature salt before the modulo, so equal tokens
of different features land in different rows), Adagrad on the table, Adam on the rest; in-memory
batches of pre-hashed row ids (the peer pays no hashing, featurization or Kafka).

    from bench.peers.plain_dcn import PlainDCN, hashed_rows, train_rate
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class LowRankCross(nn.Module):
    """x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l, as in DCN-v2 (and TorchRec's LowRankCrossNet)."""

    def __init__(self, width: int, layers: int, rank: int) -> None:
        super().__init__()
        self.v = nn.ModuleList(nn.Linear(width, rank, bias=False) for _ in range(layers))
        self.u = nn.ModuleList(nn.Linear(rank, width) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for v, u in zip(self.v, self.u, strict=True):
            x = x0 * u(v(x)) + x
        return x


class PlainDCN(nn.Module):
    def __init__(
        self,
        n_features: int,
        num_rows: int = 100_000,
        dim: int = 16,
        cross_layers: int = 2,
        cross_rank: int = 16,
        over_arch: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.table = nn.EmbeddingBag(num_rows, dim, mode="sum", sparse=True)
        nn.init.normal_(self.table.weight, 0.0, 0.01)
        width = n_features * dim
        self.cross = LowRankCross(width, cross_layers, cross_rank)
        layers: list[nn.Module] = []
        for out in over_arch:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.over = nn.Sequential(*layers)
        self.logit = nn.Linear(width, 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows: int64 [batch, n_features] (one id per feature) -> logits [batch]."""
        batch = rows.shape[0]
        x = self.table(rows.reshape(-1, 1)).view(batch, -1)
        return self.logit(self.over(self.cross(x))).squeeze(1)


def hashed_rows(columns: Sequence[Sequence[object]], num_rows: int) -> torch.Tensor:
    """Row ids [n, n_features] from raw per-feature values: Python's stable hash of (feature, value)
    would be randomised per process, so crc32 of the text, offset per feature, modulo the table."""
    import zlib

    out = np.empty((len(columns[0]), len(columns)), dtype=np.int64)
    for f, column in enumerate(columns):
        out[:, f] = [zlib.crc32(f"{f}\x1f{v}".encode()) % num_rows for v in column]
    return torch.from_numpy(out)


def train_rate(rows: torch.Tensor, labels: torch.Tensor, batch_size: int, sparse_lr: float = 0.1,
               dense_lr: float = 2e-3, num_rows: int = 100_000, seed: int = 0,
               device: str = "cpu") -> float:  # fmt: skip
    """Events/s of one pass of training over in-memory batches (one warm-up batch untimed); on
    `device` (the batches are moved there before the clock starts, the clock stops after a sync)."""
    torch.manual_seed(seed)
    model = PlainDCN(rows.shape[1], num_rows=num_rows).to(device)
    rows, labels = rows.to(device), labels.to(device)
    sparse_opt = torch.optim.Adagrad([model.table.weight], lr=sparse_lr)
    dense_opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("table.")], lr=dense_lr)
    batches = [(rows[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, rows.shape[0], batch_size)]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()

    step(*batches[0])
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for x, y in batches:
        step(x, y)
    sync()
    return rows.shape[0] / (time.perf_counter() - started)
