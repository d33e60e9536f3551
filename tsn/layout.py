"""The one tensor layout for clips, used by every layer of tsn.

Symbols:
    B  videos in a batch
    V  views of one video at test time: num_clips temporal clips x num_crops spatial crops,
       clip-major (view v = clip * num_crops + crop)
    K  segments (``num_segments``)
    L  consecutive frames per segment (``new_length``; RGB difference reads L + 1 to make L differences)
    T  frames of one clip, T = K * L (K * (L + 1) for RGB difference), segment-major: frame t
       belongs to segment t // (T / K)
    C  channels: 3, RGB order; 2 for optical flow, the quantised (x, y) flow of ``tsn.jobs.flow``
    H, W  height and width

Frames as decoded by ``tsn.io``: numpy uint8 ``(T, H, W, C)``, RGB.
One training or validation sample: torch ``(T, C, H, W)``, uint8 out of the Dataset
(normalised to float on the device by ``normalize_clips``) or float when the Dataset is asked
to normalise.
One test sample with several views: ``(V, T, C, H, W)``.
A batch prepends B: ``(B, T, C, H, W)`` or ``(B, V, T, C, H, W)``.
The model takes ``(B, T, C, H, W)`` float and returns logits ``(B, num_classes)``. Flow and RGB
difference models first stack each segment's frames into one input of ``2 L`` or ``3 L`` channels,
``(B, K, 2L or 3L, H, W)`` (``tsn.models.modality.stack_segments``), the only place where a clip
changes layout.
"""

from __future__ import annotations

from typing import Sequence

import torch

CLIP_DIMS = ("T", "C", "H", "W")
VIEW_CLIP_DIMS = ("V", "T", "C", "H", "W")


def normalize_clips(clips: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or float in 0..255) clips ``(..., C, H, W)`` -> float32 ``(x / 255 - mean) / std``.

    Runs wherever ``clips`` lives, so on CUDA the division happens on the GPU and the loader
    only moves uint8 (a quarter of the bytes of float32).
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=clips.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=clips.device).view(-1, 1, 1)
    # Fold /255 into the affine map: (x/255 - m)/s == x * (1/(255 s)) - m/s
    scale = 1.0 / (255.0 * std_t)
    shift = mean_t / std_t
    return clips.to(torch.float32) * scale - shift
