"""The speed proxy ỹ, the 2021 burst labels, and the baselines that use only ỹ (pure numpy).

Every function returns one value per frame: index t is frame t. Outside the range where a value is defined,
labels are 0 and scores are NaN (so that a score can never silently stand in for a missing one).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Frames per chunk when differencing: bounds the int16 temporary to a few hundred MB at 240×320.
_CHUNK_FRAMES = 512


def speed_proxy(frames: np.ndarray) -> np.ndarray:
    """ỹ[t] = mean over pixels of |X[t+1] − X[t]| with pixels in [0, 1]; the last frame has no successor: 0.

    `frames` is uint8 (T, H, W) at its stored resolution (ỹ changes by several percent after a resize). The
    sum of absolute differences is exact in integers, so the result is the correctly rounded mean.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f'speed_proxy expects uint8 frames (T, H, W), got {frames.dtype} {frames.shape}')
    num_frames, height, width = frames.shape
    sums = np.zeros(num_frames, np.int64)
    for start in range(0, max(num_frames - 1, 0), _CHUNK_FRAMES):
        stop = min(start + _CHUNK_FRAMES + 1, num_frames)
        chunk = frames[start:stop].astype(np.int16)
        sums[start : stop - 1] = np.abs(np.diff(chunk, axis=0)).sum(axis=(1, 2), dtype=np.int64)
    return sums / (255.0 * height * width)


def valid_range(num_frames: int, n: int = 30, h: int = 45, frames_per_step: int = 4) -> tuple[int, int]:
    """Inclusive bounds of the target frames t that have a full history and a defined label.

    History: the n·frames_per_step frames ending at t. Label: ỹ[t … t+h], where ỹ[T−1] is undefined, so
    t + h ≤ T − 2. For the 2021 parameters (n=30, h=45): (119, T − 47). Empty when first > last.
    """
    return n * frames_per_step - 1, num_frames - 2 - h


def burst_labels(
    y_tilde: np.ndarray, n: int = 30, h: int = 45, b: float = 0.1, c: float = 0.001, frames_per_step: int = 4
) -> np.ndarray:
    """The 2021 rule: will a burst of motion start within the next h frames? int8 per frame, 0 outside range.

    With W = ỹ[t : t+h+1]: y[t] = 1 iff ptp(W) ≥ c (the speed changes enough) and ỹ[t] ≤ min(W) + b·ptp(W)
    (t is near the low point of the window, so the change ahead is a rise).
    """
    y_tilde = _as_series(y_tilde)
    labels = np.zeros(len(y_tilde), np.int8)
    first, last = valid_range(len(y_tilde), n, h, frames_per_step)
    if first > last:
        return labels
    windows = sliding_window_view(y_tilde[first : last + h + 1], h + 1)
    low, high = windows.min(axis=1), windows.max(axis=1)
    spread = high - low
    burst = (spread >= c) & (y_tilde[first : last + 1] <= low + b * spread)
    labels[first : last + 1] = burst
    return labels


def baseline_probability(y_tilde: np.ndarray) -> np.ndarray:
    """The 2021 algorithmic baseline from the past 89 values of ỹ; NaN for t < 89.

    P = ỹ[t−89 : t]; P1 = σ(5300·(ptp(P) − 0.0006)) (the fish have been moving lately);
    P2 = σ(−11000·(ỹ[t−1] − (min(P) + 0.2·ptp(P)))) (they are slow now); ŷ = (P1 + P2) / 2.
    """
    y_tilde = _as_series(y_tilde)
    past = 89
    probs = np.full(len(y_tilde), np.nan)
    if len(y_tilde) <= past:
        return probs
    windows = sliding_window_view(y_tilde[:-1], past)  # windows[k] = ỹ[k : k+89], the past of t = k + 89
    low = windows.min(axis=1)
    spread = windows.max(axis=1) - low
    p1 = _sigmoid(5300.0 * (spread - 0.0006))
    p2 = _sigmoid(-11000.0 * (windows[:, -1] - (low + 0.2 * spread)))
    probs[past:] = (p1 + p2) / 2
    return probs


def trivial_baselines(y_tilde: np.ndarray) -> dict[str, np.ndarray]:
    """Scores any model must beat: −ỹ[t−1] (slow now, so a burst is coming; NaN at t = 0) and all-negative."""
    y_tilde = _as_series(y_tilde)
    previous = np.full(len(y_tilde), np.nan)
    previous[1:] = -y_tilde[:-1]
    return {'-y_tilde[t-1]': previous, 'all-negative': np.zeros(len(y_tilde))}


def _as_series(y_tilde: np.ndarray) -> np.ndarray:
    y_tilde = np.asarray(y_tilde, np.float64)
    if y_tilde.ndim != 1:
        raise ValueError(f'expected ỹ as one value per frame (T,), got shape {y_tilde.shape}')
    return y_tilde


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over='ignore'):  # exp overflows to inf for very negative x, and 1/(1+inf) = 0 is right.
        return 1.0 / (1.0 + np.exp(-x))
