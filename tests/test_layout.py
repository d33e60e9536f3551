import torch

from tsn.layout import normalize_clips


def test_normalize_clips_matches_hand_computed_values() -> None:
    clips = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 1, 1)
    out = normalize_clips(clips, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    expected = torch.tensor([(0 - 0.5) / 0.5, (1 - 0.5) / 0.25, (0.2 - 0.2) / 0.1]).view(1, 3, 1, 1).expand(2, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
