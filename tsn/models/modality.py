"""TSN's other streams: optical flow and RGB difference, and the cross-modality initialisation of their first layer.

A flow network sees, per segment, ``L`` consecutive flow pairs stacked as ``2 L`` channels
(x1, y1, x2, y2, ...); an RGB-difference network sees the ``L`` differences of ``L + 1``
consecutive frames as ``3 L`` channels (TSN, Wang et al., ECCV 2016 and TPAMI 2018). Both start
from the ImageNet RGB weights: the first convolution's kernel is averaged over its 3 input
channels and that mean is replicated to the new channel count (TSN's cross-modality
initialisation), scaled by ``3 / channels`` so that an input whose channels move together gets
the response the RGB kernel gave to a grey image of the same amplitude (the plain replication
would make it ``channels / 3`` times larger and saturate the layers above). Every other layer
keeps its ImageNet weights.
"""

from __future__ import annotations

import torch
from torch import nn

MODALITIES = ("rgb", "flow", "rgbdiff")
# Flow is stored quantised around 127.5 (tsn.jobs.flow: zero motion), normalised to about [-1, 1] as
# mmaction2 does, but centred on 127.5, not 128, so that a flip (255 - x) negates the value exactly.
FLOW_MEAN = 127.5 / 255.0
FLOW_STD = 128.0 / 255.0


def input_channels(modality: str, new_length: int) -> int:
    """Channels of one segment's stack as the backbone sees it: 3, 2 L (flow) or 3 L (RGB difference)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if new_length < 1:
        raise ValueError(f"new_length must be >= 1, got {new_length}")
    if modality == "rgb":
        return 3
    return (2 if modality == "flow" else 3) * new_length


def first_conv(backbone: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The backbone's first convolution taking 3 channels: ``(parent module, attribute name, conv)``.

    Found in registration order, which is the order of the forward pass for every backbone here
    (ResNets' ``conv1``, BN-Inception's first 7x7, EfficientNet-Lite0's and MobileNet's stem, VGG's
    ``features[0]``). ValueError when there is none."""
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                return parent, name, child
    raise ValueError("the backbone has no convolution taking 3 input channels to adapt")


def cross_modality_init(backbone: nn.Module, channels: int) -> nn.Conv2d:
    """Replace the backbone's first convolution by one taking ``channels`` inputs, its kernel the
    RGB kernel's channel mean replicated and scaled by ``3 / channels`` (module docstring); returns it."""
    parent, name, conv = first_conv(backbone)
    # built on the meta device: no random initialisation drawn (it is overwritten anyway), so the layers
    # built after this one get the same random weights as in the RGB network
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode, device="meta", dtype=conv.weight.dtype)
    new = new.to_empty(device=conv.weight.device)
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)  # (O, 1, kh, kw)
        new.weight.copy_(mean.expand(-1, channels, -1, -1) * (3.0 / channels))  # (O, channels, kh, kw)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, name, new)
    return new


def stack_segments(clips: torch.Tensor, modality: str, num_segments: int) -> torch.Tensor:
    """The loader's frames ``(B, T, C, H, W)`` -> the backbone's inputs ``(B, T', C', H, W)``.

    rgb: unchanged (T' = T = K L frames of 3 channels). flow: T = K L flow pairs of 2 channels ->
    (B, K, 2 L, H, W), channels x1, y1, x2, y2, ... rgbdiff: T = K (L + 1) normalised frames ->
    the L differences of consecutive frames of each segment, (B, K, 3 L, H, W).
    """
    if modality == "rgb":
        return clips
    b, t, c, h, w = clips.shape
    if t % num_segments:
        raise ValueError(f"clip has {t} frames, not a multiple of num_segments={num_segments}")
    stacks = clips.reshape(b, num_segments, t // num_segments, c, h, w)  # (B, K, L or L+1, C, H, W)
    if modality == "rgbdiff":
        stacks = stacks[:, :, 1:] - stacks[:, :, :-1]  # (B, K, L, 3, H, W)
    return stacks.flatten(2, 3)  # (B, K, L*C, H, W)
