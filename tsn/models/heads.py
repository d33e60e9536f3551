"""Classification heads: feature map (N, D, h, w) -> logits (N, num_classes).

Each head has ``pool(x) -> (N, descriptor_dim)`` (the vector before dropout and the classifier,
used for feature extraction and for pooling over time before the classifier),
``classify(descriptor) = fc(dropout(descriptor))`` and ``forward(x) = classify(pool(x))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_new_layers(module: nn.Module) -> None:
    """Initialise freshly created layers: Kaiming-normal convolutions (fan_out, ReLU),
    Xavier-uniform linear layers, zero biases, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GAPHead(nn.Module):
    """Global average pooling -> dropout -> linear: (N, D, h, w) -> (N, num_classes)."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.descriptor_dim = in_dim
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        init_new_layers(self)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) -> (N, D) spatial mean."""
        return self.avgpool(x).flatten(1)  # (N, D, 1, 1) -> (N, D)

    def classify(self, descriptor: torch.Tensor) -> torch.Tensor:
        """(N, descriptor_dim) -> (N, num_classes)."""
        return self.fc(self.dropout(descriptor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pool(x))


def bilinear_pool(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Bilinear (second-order) pooling: (N, d, h, w) -> (N, d*d) unit-length descriptors.

    G = X Xᵀ / (h w) with X the (d, h w) matrix of local features, then the signed square root
    ``sign(g) * sqrt(|g| + eps)`` (``eps`` keeps the gradient finite at 0; the sign of every entry
    is kept, and 0 stays 0), then L2 normalisation. Computed in float32 even under autocast,
    since the products of d-dimensional features overflow float16.
    """
    n, d, h, w = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        local = x.float().reshape(n, d, h * w)  # (N, d, h*w)
        gram = torch.bmm(local, local.transpose(1, 2)) / (h * w)  # (N, d, d)
        z = gram.reshape(n, d * d)  # (N, d*d)
        z = torch.sign(z) * torch.sqrt(z.abs() + eps)
        return F.normalize(z, dim=1)


class BilinearHead(nn.Module):
    """Optional 1x1 reduction (conv -> BN -> ReLU, e.g. 2048 -> 256 so that d² stays manageable)
    -> bilinear pooling -> dropout -> linear: (N, D, h, w) -> (N, num_classes).

    ``reduce_dim=None`` pools the D input channels directly (descriptor D²).
    """

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.5, reduce_dim: int | None = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        d = in_dim if reduce_dim is None else reduce_dim
        self.descriptor_dim = d * d
        if reduce_dim is None:
            self.reduce: nn.Module = nn.Identity()
        else:
            self.reduce = nn.Sequential(
                nn.Conv2d(in_dim, reduce_dim, 1, bias=False),
                nn.BatchNorm2d(reduce_dim),
                nn.ReLU(inplace=True),
            )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(d * d, num_classes)
        init_new_layers(self)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) -> (N, d*d) unit-length bilinear descriptor."""
        return bilinear_pool(self.reduce(x))

    def classify(self, descriptor: torch.Tensor) -> torch.Tensor:
        """(N, descriptor_dim) -> (N, num_classes)."""
        return self.fc(self.dropout(descriptor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pool(x))
