"""TSN sampling: exact index tables, each worked out by hand in the comments.

Notation: n = max(num_frames - L + 1, 1) usable starts, K segments, L new_length, C clips.
"""

from __future__ import annotations

import numpy as np
import pytest

# Imported as a module: a bare ``test_indices`` in this namespace would be collected by pytest.
from tsn.data import sampling


def table(values: list) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def assert_table(actual: np.ndarray, expected: list) -> None:
    assert actual.dtype == np.int64
    np.testing.assert_array_equal(actual, table(expected))


# ----------------------------------------------------------------------------- val


def test_val_middle_of_each_segment() -> None:
    # 10 frames, K=3: n=10, start_k = ((2k+1)*10)//6 -> 10//6=1, 30//6=5, 50//6=8
    assert_table(sampling.val_indices(10, 3), [1, 5, 8])


def test_val_single_segment() -> None:
    # K=1: (1*10)//2 = 5, the middle frame
    assert_table(sampling.val_indices(10, 1), [5])
    # 1 frame: n=1, 1//2 = 0
    assert_table(sampling.val_indices(1, 1), [0])


def test_val_fewer_frames_than_segments() -> None:
    # 2 frames, K=5: n=2, ((2k+1)*2)//10 -> 2//10=0, 6//10=0, 10//10=1, 14//10=1, 18//10=1
    assert_table(sampling.val_indices(2, 5), [0, 0, 1, 1, 1])
    # 1 frame: every segment takes frame 0
    assert_table(sampling.val_indices(1, 4), [0, 0, 0, 0])


def test_val_new_length() -> None:
    # 10 frames, K=3, L=2: n=9, starts ((2k+1)*9)//6 -> 9//6=1, 27//6=4, 45//6=7;
    # each start expands to start, start+1, segment-major
    assert_table(sampling.val_indices(10, 3, 2), [1, 2, 4, 5, 7, 8])
    # 8 frames, K=2, L=4: n=5, starts 5//4=1, 15//4=3 -> [1..4], [3..6]
    assert_table(sampling.val_indices(8, 2, 4), [1, 2, 3, 4, 3, 4, 5, 6])


def test_val_new_length_longer_than_video_is_clipped() -> None:
    # 3 frames, K=2, L=5: n=max(-1,1)=1, starts (1*1)//4=0, (3*1)//4=0;
    # 0..4 clipped to the last frame 2
    assert_table(sampling.val_indices(3, 2, 5), [0, 1, 2, 2, 2, 0, 1, 2, 2, 2])


# ----------------------------------------------------------------------------- test


def test_test_two_clips() -> None:
    # 10 frames, K=3, C=2: 2KC=12, part j = k*C + c, start = ((2j+1)*10)//12
    # view c=0: j=0,2,4 -> 10//12=0, 50//12=4, 90//12=7
    # view c=1: j=1,3,5 -> 30//12=2, 70//12=5, 110//12=9
    assert_table(sampling.test_indices(10, 3, num_clips=2), [[0, 4, 7], [2, 5, 9]])


def test_test_three_clips_new_length() -> None:
    # 10 frames, K=2, L=2, C=3: n=9, 2KC=12, start = ((2j+1)*9)//12, j = k*3 + c
    # c=0: j=0 -> 9//12=0,  j=3 -> 63//12=5  => [0,1, 5,6]
    # c=1: j=1 -> 27//12=2, j=4 -> 81//12=6  => [2,3, 6,7]
    # c=2: j=2 -> 45//12=3, j=5 -> 99//12=8  => [3,4, 8,9]
    assert_table(
        sampling.test_indices(10, 2, 2, 3),
        [[0, 1, 5, 6], [2, 3, 6, 7], [3, 4, 8, 9]],
    )


def test_test_one_clip_is_val() -> None:
    # C=1 is the val formula: one row [1, 5, 8] for 10 frames, K=3
    assert_table(sampling.test_indices(10, 3), [[1, 5, 8]])
    for num_frames in range(1, 30):
        for k in range(1, 6):
            for length in range(1, 4):
                np.testing.assert_array_equal(
                    sampling.test_indices(num_frames, k, length, 1)[0], sampling.val_indices(num_frames, k, length)
                )


def test_test_fewer_frames_than_views() -> None:
    # 4 frames, K=3, C=2: 2KC=12, start=((2j+1)*4)//12
    # c=0: j=0,2,4 -> 4//12=0, 20//12=1, 36//12=3 ; c=1: j=1,3,5 -> 12//12=1, 28//12=2, 44//12=3
    assert_table(sampling.test_indices(4, 3, num_clips=2), [[0, 1, 3], [1, 2, 3]])
    # 1 frame: everything is frame 0
    assert_table(sampling.test_indices(1, 3, num_clips=2), [[0, 0, 0], [0, 0, 0]])


def test_test_single_segment_several_clips() -> None:
    # 12 frames, K=1, C=4: 2KC=8, start=((2c+1)*12)//8 -> 12//8=1, 36//8=4, 60//8=7, 84//8=10
    assert_table(sampling.test_indices(12, 1, num_clips=4), [[1], [4], [7], [10]])


# ----------------------------------------------------------------------------- train


def test_train_fractional_segments_match_val_boundaries() -> None:
    # 10 frames, K=3: boundaries (k*10)//3 -> 0, 3, 6, 10: segments [0,3), [3,6), [6,10);
    # the last segment is 4 frames long, so frame 9 is drawn too
    seen = set()
    for seed in range(300):
        indices = sampling.train_indices(10, 3, rng=np.random.default_rng(seed))
        assert indices.dtype == np.int64 and indices.shape == (3,)
        for k, index in enumerate(indices):
            assert (0, 3, 6)[k] <= index < (3, 6, 10)[k]
        seen.update((k, int(i)) for k, i in enumerate(indices))
    assert seen == {(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6), (2, 7), (2, 8), (2, 9)}


@pytest.mark.parametrize("num_frames,k", [(7, 3), (15, 8), (10, 3), (100, 8), (9, 9), (31, 4)])
def test_train_fractional_reaches_every_frame(num_frames: int, k: int) -> None:
    seen = set()
    for seed in range(400):
        seen.update(int(i) for i in sampling.train_indices(num_frames, k, rng=np.random.default_rng(seed)))
    assert seen == set(range(num_frames))


def test_train_mmaction2_bounds_never_draw_the_tail() -> None:
    # the two cases: n=7, K=3 -> avg 2, frame 6 never drawn; n=15, K=8 -> avg 1, frames 8..14 never
    for num_frames, k, reachable in ((7, 3, set(range(6))), (15, 8, set(range(8)))):
        seen = set()
        for seed in range(300):
            seen.update(int(i) for i in sampling.train_indices(num_frames, k, rng=np.random.default_rng(seed),
                                                               bounds="mmaction2"))
        assert seen == reachable


def test_train_mmaction2_each_index_in_its_own_segment() -> None:
    # 10 frames, K=3: avg = 10//3 = 3, segment k is [3k, 3k+3); frame 9 is never drawn
    seen = set()
    for seed in range(200):
        indices = sampling.train_indices(10, 3, rng=np.random.default_rng(seed), bounds="mmaction2")
        for k, index in enumerate(indices):
            assert 3 * k <= index < 3 * k + 3
        seen.update((k, int(i)) for k, i in enumerate(indices))
    assert seen == {(k, 3 * k + r) for k in range(3) for r in range(3)}


def test_train_unknown_bounds_is_an_error() -> None:
    with pytest.raises(ValueError, match="bounds"):
        sampling.train_indices(10, 3, rng=np.random.default_rng(0), bounds="tsn")


def test_train_new_length_consecutive() -> None:
    # 10 frames, K=3, L=2: n=9, boundaries 0, 3, 6, 9: start_k in [3k, 3k+3), then start_k + 1
    for seed in range(50):
        indices = sampling.train_indices(10, 3, 2, rng=np.random.default_rng(seed))
        assert indices.shape == (6,)
        for k in range(3):
            start, nxt = indices[2 * k], indices[2 * k + 1]
            assert 3 * k <= start < 3 * k + 3 and nxt == start + 1


def test_train_same_seed_same_indices() -> None:
    first = [sampling.train_indices(100, 8, 1, rng=np.random.default_rng(123)) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    # one generator drives a sequence of calls reproducibly
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(5):
        np.testing.assert_array_equal(
            sampling.train_indices(37, 4, 2, rng=rng_a), sampling.train_indices(37, 4, 2, rng=rng_b)
        )


def test_train_pinned_table() -> None:
    # fractional: default_rng(0).integers(0, [3, 3, 4]) draws offsets [2, 1, 2];
    # 10 frames, K=3: boundaries 0, 3, 6, 10 -> starts 0+2, 3+1, 6+2
    assert_table(sampling.train_indices(10, 3, rng=np.random.default_rng(0)), [2, 4, 8])
    # L=2: n=9, boundaries 0, 3, 6, 9, lengths [3, 3, 3]: offsets [2, 1, 1] -> starts 2, 4, 7
    assert_table(sampling.train_indices(10, 3, 2, rng=np.random.default_rng(0)), [2, 3, 4, 5, 7, 8])
    # 43 frames, K=4, L=3: n=41, boundaries 0, 10, 20, 30, 41; default_rng(7).integers(0, [10, 10, 10, 11])
    # draws [9, 6, 6, 9] -> starts 9, 16, 26, 39, three frames each
    assert_table(
        sampling.train_indices(43, 4, 3, rng=np.random.default_rng(7)),
        [9, 10, 11, 16, 17, 18, 26, 27, 28, 39, 40, 41],
    )
    # 15 frames, K=8: boundaries 0, 1, 3, 5, 7, 9, 11, 13, 15; default_rng(0).integers(0, [1, 2, ..., 2])
    # draws [0, 1, 1, 1, 0, 0, 0, 0]
    assert_table(sampling.train_indices(15, 8, rng=np.random.default_rng(0)), [0, 2, 4, 6, 7, 9, 11, 13])


def test_train_mmaction2_pinned_table() -> None:
    # default_rng(0).integers(0, 3, size=3) draws offsets [2, 1, 1];
    # 10 frames, K=3: avg=3 -> starts 0+2, 3+1, 6+1
    assert_table(sampling.train_indices(10, 3, rng=np.random.default_rng(0), bounds="mmaction2"), [2, 4, 7])
    # default_rng(7).integers(0, 10, size=4) draws [9, 6, 6, 8];
    # 43 frames, K=4, L=3: n=41, avg=10 -> starts 9, 16, 26, 38, three frames each
    assert_table(
        sampling.train_indices(43, 4, 3, rng=np.random.default_rng(7), bounds="mmaction2"),
        [9, 10, 11, 16, 17, 18, 26, 27, 28, 38, 39, 40],
    )


def test_train_spread_when_fewer_usable_starts_than_segments() -> None:
    # 2 frames, K=5: n=2 < K, start_k = (k*2)//5 -> 0, 2//5=0, 4//5=0, 6//5=1, 8//5=1
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert_table(sampling.train_indices(2, 5, rng=rng), [0, 0, 0, 1, 1])
    assert rng.bit_generator.state == state  # deterministic: no draw
    # 6 frames, K=4, L=4: n=3 < 4, starts (k*3)//4 -> 0, 0, 1, 2; four frames each, clipped at 5
    assert_table(
        sampling.train_indices(6, 4, 4, rng=np.random.default_rng(0)),
        [0, 1, 2, 3, 0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5],
    )


def test_train_single_segment_and_single_frame() -> None:
    # K=1: avg = n, the start is anywhere in the video
    for seed in range(20):
        (index,) = sampling.train_indices(7, 1, rng=np.random.default_rng(seed))
        assert 0 <= index < 7
    # 1 frame, K=3: n=1 < 3, all zero
    assert_table(sampling.train_indices(1, 3, rng=np.random.default_rng(0)), [0, 0, 0])


# ----------------------------------------------------------------------------- all modes


def test_indices_always_in_range_and_segment_major() -> None:
    rng = np.random.default_rng(0)
    for num_frames in range(1, 25):
        for k in range(1, 6):
            for length in (1, 2, 3):
                for clip in (
                    sampling.train_indices(num_frames, k, length, rng=rng),
                    sampling.val_indices(num_frames, k, length),
                    *sampling.test_indices(num_frames, k, length, 3),
                ):
                    assert clip.shape == (k * length,)
                    assert clip.min() >= 0 and clip.max() <= num_frames - 1
                    per_segment = clip.reshape(k, length)  # (K, L)
                    starts = per_segment[:, 0]
                    expected = np.minimum(starts[:, None] + np.arange(length), num_frames - 1)
                    np.testing.assert_array_equal(per_segment, expected)
                    assert np.all(np.diff(starts) >= 0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: sampling.val_indices(0, 3), "num_frames"),
        (lambda: sampling.val_indices(10, 0), "num_segments"),
        (lambda: sampling.val_indices(10, 3, 0), "new_length"),
        (lambda: sampling.test_indices(10, 3, 1, 0), "num_clips"),
        (lambda: sampling.test_indices(-1, 3), "num_frames"),
        (lambda: sampling.train_indices(0, 3, rng=np.random.default_rng(0)), "num_frames"),
        (lambda: sampling.train_indices(10, -2, rng=np.random.default_rng(0)), "num_segments"),
        (lambda: sampling.train_indices(10, 3, 0, rng=np.random.default_rng(0)), "new_length"),
        (lambda: sampling.val_indices(10.5, 3), "num_frames"),
        (lambda: sampling.val_indices(True, 3), "num_frames"),
    ],
)
def test_bad_arguments_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be an integer >= 1"):
        call()


def test_numpy_integers_accepted_and_rng_required() -> None:
    assert_table(sampling.val_indices(np.int64(10), np.int32(3)), [1, 5, 8])
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        sampling.train_indices(10, 3, rng=np.random.RandomState(0))  # type: ignore[arg-type]
