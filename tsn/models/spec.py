"""What a backbone expects and what it returns, in one frozen record."""

from __future__ import annotations

from dataclasses import dataclass

# torchvision's ImageNet statistics (RGB, images scaled to 0..1)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about one backbone that the rest of tsn needs.

    name: the name given to ``build_backbone``.
    mean, std: per channel of the loader's frames (RGB; (x, y) for flow), on the 0..1 scale, as
        ``tsn.layout.normalize_clips`` uses them: the backbone sees ``(x / 255 - mean) / std`` for
        uint8 pixels ``x``.
    input_size: the square side the weights were trained at (crop size).
    feature_dim: D, channels of the backbone's output feature map ``(N, D, h, w)``.
    feature_layers: names of modules inside the backbone (as in ``named_modules``) worth asking
        ``FeatureExtractor`` for, shallow to deep; the last one gives the final feature map.
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    feature_dim: int
    feature_layers: tuple[str, ...]
