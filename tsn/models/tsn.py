"""Temporal Segment Network: one 2D backbone applied to every frame, a head, a segment consensus.

Input ``(B, T, C, H, W)`` float, normalised with ``model.spec`` (see ``tsn.layout``), with
T = K * L frames segment-major (K = ``num_segments``, L frames per segment). Each frame goes
through the backbone on its own. With the score consensus ``avg`` or ``max`` each frame also
goes through the head on its own, the L frame scores of a segment are averaged into the segment
score, and the consensus combines the K segment scores. With ``feature_max`` the head's pooled
vectors are combined instead: averaged over a segment's L frames, then the element-wise maximum
over the K segments goes through the classifier once (temporal max pooling of frame features,
"conv pooling" in Ng et al., CVPR 2015): a feature that fires in the one segment where the
action peaks (the leg of a kick) survives, where an average over segments dilutes it.
"""

from __future__ import annotations

import torch
from torch import nn

from tsn.models.modality import MODALITIES, stack_segments
from tsn.models.spec import BackboneSpec
from tsn.models.temporal import shifted_convs

CONSENSUS_TYPES = ("avg", "max", "feature_max", "identity")


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm (including SyncBatchNorm) inside ``module``, in registration order."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class TSN(nn.Module):
    """TSN(backbone, spec, head, num_segments, consensus, partial_bn, freeze_bn).

    backbone: (N, 3, H, W) -> (N, D, h, w); head: (N, D, h, w) -> (N, num_classes) with
    ``num_classes`` and ``descriptor_dim`` attributes, ``pool`` and ``classify`` methods (see
    ``tsn.models.heads``); with "feature_max" only ``pool`` and ``classify`` run, not ``head.forward``.
    consensus: "avg" (default) or "max" of the segment scores -> (B, num_classes); "feature_max":
    the classifier applied to the maximum of the segment descriptors -> (B, num_classes);
    "identity" returns the per-segment scores (B, K, num_classes).
    partial_bn: TSN's partial BatchNorm: every BatchNorm of the backbone but the first keeps its
    ImageNet statistics and affine parameters (requires_grad False, eval mode even in
    ``train()``), which limits over-fitting on small data sets. freeze_bn: every BatchNorm of
    the backbone, the first too: the first layer's batch statistics of a few correlated clips
    are far from ImageNet's, and using them shifts every feature the pretrained layers see.
    ``backbone_frozen`` (set by ``tsn.models.finetune.freeze_backbone``) keeps the whole backbone
    in eval mode in ``train()``, ``frozen_modules`` (set by ``freeze_stages``) those modules.
    modality: "rgb", or "flow"/"rgbdiff", whose frames are first stacked per segment
    (``tsn.models.modality.stack_segments``) into the inputs of a backbone adapted to them.
    fixed_head_statistics: the head's BatchNorm layers (the bilinear head's reduction) stay in eval
    mode in ``train()``, normalising with their running statistics while their scale and shift
    train. LP-FT needs it: its probe is fitted on eval-mode descriptors, and a BatchNorm on batch
    statistics would give the classifier other ones from the first step on.
    """

    def __init__(
        self,
        backbone: nn.Module,
        spec: BackboneSpec,
        head: nn.Module,
        num_segments: int,
        consensus: str = "avg",
        partial_bn: bool = False,
        freeze_bn: bool = False,
        modality: str = "rgb",
        fixed_head_statistics: bool = False,
    ) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
        if consensus not in CONSENSUS_TYPES:
            raise ValueError(f"consensus {consensus!r} is not one of {', '.join(CONSENSUS_TYPES)}")
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        self.backbone = backbone
        self.head = head
        self.spec = spec
        self._num_segments = num_segments
        self.consensus = consensus
        self.modality = modality
        self.partial_bn = partial_bn or freeze_bn
        self.freeze_bn = freeze_bn
        self.fixed_head_statistics = fixed_head_statistics
        self.backbone_frozen = False
        # modules whose parameters ``tsn.models.finetune.freeze_stages`` froze: eval mode in train()
        self.frozen_modules: list[nn.Module] = []
        if self.partial_bn:
            for bn in self.partial_bn_layers():
                for p in bn.parameters():
                    p.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return int(self.head.num_classes)

    @property
    def num_segments(self) -> int:
        """K, the segments per clip; setting it also sets the clip length the temporal shift works in."""
        return self._num_segments

    @num_segments.setter
    def num_segments(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"num_segments must be >= 1, got {value}")
        self._num_segments = value
        for conv in shifted_convs(self.backbone):
            conv.segments = value

    @property
    def temporal_shift(self) -> str:
        """"none", or the direction of the backbone's temporal shift ("bidirectional" or "causal")."""
        convs = shifted_convs(self.backbone)
        return convs[0].direction if convs else "none"

    def partial_bn_layers(self) -> list[nn.modules.batchnorm._BatchNorm]:
        """The backbone's BatchNorm layers that partial BN freezes: all but the first (all with ``freeze_bn``)."""
        layers = batchnorm_layers(self.backbone)
        return layers if self.freeze_bn else layers[1:]

    def train(self, mode: bool = True) -> TSN:
        """Like ``nn.Module.train``, but frozen BatchNorm layers stay in eval mode, so that their
        running statistics do not move."""
        super().train(mode)
        if mode and self.fixed_head_statistics:
            for bn in batchnorm_layers(self.head):
                bn.eval()
        if mode and self.backbone_frozen:
            self.backbone.eval()
        elif mode:
            for module in self.frozen_modules:
                module.eval()
            if self.partial_bn:
                for bn in self.partial_bn_layers():
                    bn.eval()
        return self

    def batch_statistics_layers(self) -> list[str]:
        """The names of the BatchNorm layers that normalise with batch statistics in ``train()`` mode (the
        model's own mode is left as it was)."""
        was_training = self.training
        self.train(True)
        names = [name for name, m in self.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        self.train(was_training)
        return names

    def _check_frames(self, num_frames: int) -> None:
        if num_frames % self.num_segments != 0:
            raise ValueError(f"clip has {num_frames} frames, not a multiple of num_segments={self.num_segments}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> backbone feature maps (B, T', D, h, w), one per backbone input: per frame
        for RGB (T' = T = K * L), per segment's stack for flow and RGB difference (T' = K)."""
        x = stack_segments(x, self.modality, self.num_segments)  # (B, T', C', H, W)
        b, t = x.shape[:2]
        self._check_frames(t)
        frames = x.reshape(b * t, *x.shape[2:])  # (B*T, C, H, W)
        maps = self.backbone(frames)  # (B*T, D, h, w)
        return maps.reshape(b, t, *maps.shape[1:])  # (B, T, D, h, w)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D, h, w) -> (B, num_classes), or (B, K, num_classes) with consensus "identity"."""
        if self.consensus == "feature_max":
            return self.head.classify(self._pooled_descriptor(features))
        b, t = features.shape[:2]
        self._check_frames(t)
        scores = self.head(features.reshape(b * t, *features.shape[2:]))  # (B*T, classes)
        scores = scores.reshape(b, self.num_segments, t // self.num_segments, -1)  # (B, K, L, classes)
        segment_scores = scores.mean(dim=2)  # (B, K, classes)
        if self.consensus == "avg":
            return segment_scores.mean(dim=1)  # (B, classes)
        if self.consensus == "max":
            return segment_scores.amax(dim=1)  # (B, classes)
        return segment_scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> logits (B, num_classes) (or (B, K, num_classes) for "identity")."""
        return self.forward_head(self.forward_features(x))

    def segment_descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, K, F): the head's pooled vector (before dropout and classifier)
        per segment, the L frames of a segment averaged."""
        return self._segment_descriptors(self.forward_features(x))

    def video_descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, F): the segment maximum with "feature_max", else the segment mean.
        With "avg" and "feature_max" the classifier of this vector is the video's logits in eval mode
        (a linear map of the mean is the mean of the segment scores), so it is what a linear probe
        fits for LP-FT; with "max" and "identity" it is only a summary of the video."""
        return self._pooled_descriptor(self.forward_features(x))

    def _segment_descriptors(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone maps (B, T, D, h, w) -> pooled vectors (B, K, F), the L frames of a segment averaged."""
        b, t = features.shape[:2]
        self._check_frames(t)
        pooled = self.head.pool(features.reshape(b * t, *features.shape[2:]))  # (B*T, F)
        pooled = pooled.reshape(b, self.num_segments, t // self.num_segments, -1)  # (B, K, L, F)
        return pooled.mean(dim=2)  # (B, K, F)

    def _pooled_descriptor(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone maps (B, T, D, h, w) -> (B, F): segment maximum ("feature_max") or mean (otherwise)."""
        segments = self._segment_descriptors(features)  # (B, K, F)
        if self.consensus == "feature_max":
            return segments.amax(dim=1)  # (B, F)
        return segments.mean(dim=1)  # (B, F)
