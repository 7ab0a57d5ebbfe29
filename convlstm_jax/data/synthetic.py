"""A synthetic fish tank: six bright fish on a dark background, filmed from above at 30 fps.

Most of the time the fish wander slowly. When two of them stay close for a while, one of them, after a short
random latency, chases the other: both burst into fast motion that relaxes within about a second. A few bursts
come with no cause. A burst is therefore partly predictable from the spatial configuration of the fish (which
only a video model sees) and barely from the speed proxy ỹ alone.

The motion is simulated in tank units (the pixels of a 120×160 frame) and rendered directly at any frame
size, each fish an anti-aliased elongated Gaussian splat on a small patch. Deterministic given the seed.

A video of it to predict on: `python -m convlstm_jax.data.tank_video --seconds 60 --out tank.mp4`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

TANK_HEIGHT, TANK_WIDTH = 120.0, 160.0  # tank units: pixels of the reference 120×160 frame
VERSION = 1  # bump when the frames change for a given seed, so that cached datasets are rebuilt
CAUSES = ('chase', 'flee', 'spontaneous')  # why a fish burst; index = code in `bursts['cause']`
_RENDER_CHUNK = 512  # frames rendered at once; fixed, so that the noise does not depend on memory limits


@dataclasses.dataclass(frozen=True)
class TankParams:
    """Behaviour and looks of the tank. Lengths in tank units, times in frames (30 fps)."""

    num_fish: int = 6
    calm_speed: float = 0.35  # units per frame, about one body length per second
    calm_speed_jitter: float = 0.15  # relative std of each fish's slowly varying calm speed
    turn_noise: float = 0.05  # rad per frame, std of the heading's random walk
    wall_margin: float = 8.0
    close_distance: float = 10.0  # two fish this close (centre to centre) are "together"
    close_frames: int = 36  # … and after this long together, one may chase the other
    chase_probability: float = 0.85  # per encounter that lasts close_frames
    latency_frames: tuple[int, int] = (6, 24)  # random delay between "long enough together" and the chase
    flee_delay_frames: tuple[int, int] = (2, 5)  # the chased fish reacts this much later
    burst_speed: float = 8.0  # units per frame added at a chase onset, decaying exponentially
    burst_decay_frames: float = 10.0  # time constant of that decay: the burst is over within about a second
    burst_frames: int = 30  # a chaser steers toward its target this long
    refractory_frames: int = 90  # after a burst, a fish neither chases, nor is chased, nor bursts on its own
    spontaneous_per_second: float = 1 / 240  # per fish: bursts with no cause
    body_length: float = 12.0
    body_width: float = 2.4
    fish_brightness: float = 210.0
    background: float = 6.0
    flicker: float = 0.02  # relative std of the global brightness, varying over about half a second
    fps: float = 30.0


@dataclasses.dataclass
class TankRecording:
    """Rendered frames and the ground truth behind them."""

    frames: np.ndarray  # uint8 (T, H, W)
    positions: np.ndarray  # float32 (T, N, 2) fish centres (y, x) in tank units
    headings: np.ndarray  # float32 (T, N) radians, 0 = +x, π/2 = +y
    speeds: np.ndarray  # float32 (T, N) tank units per frame
    bursts: dict[str, np.ndarray]  # 'frame' int64 onset, 'fish' int32, 'cause' int8 index into CAUSES


@dataclasses.dataclass
class Trajectories:
    """The simulated motion, before rendering (fields as in TankRecording)."""

    positions: np.ndarray
    headings: np.ndarray
    speeds: np.ndarray
    bursts: dict[str, np.ndarray]


def generate(
    num_frames: int,
    *,
    seed: int = 0,
    height: int = 120,
    width: int = 160,
    params: TankParams | None = None,
) -> TankRecording:
    """One continuous recording of `num_frames` frames rendered at height × width."""
    params = params or TankParams()
    trajectories = simulate(num_frames, seed=seed, params=params)
    frames = np.empty((num_frames, height, width), np.uint8)
    start = 0
    for chunk in render(trajectories, height=height, width=width, seed=seed, params=params):
        frames[start : start + len(chunk)] = chunk
        start += len(chunk)
    return TankRecording(
        frames=frames,
        positions=trajectories.positions,
        headings=trajectories.headings,
        speeds=trajectories.speeds,
        bursts=trajectories.bursts,
    )


def simulate(num_frames: int, *, seed: int = 0, params: TankParams | None = None) -> Trajectories:
    """Fish motion frame by frame: slow wandering, chases after long encounters, spontaneous bursts."""
    params = params or TankParams()
    if num_frames < 1 or params.num_fish < 1:
        raise ValueError(
            f'need at least one frame and one fish, got {num_frames} frames, {params.num_fish} fish'
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return _Simulation(params, rng).run(num_frames)


class _Simulation:
    """The state of every fish, advanced one frame at a time (six fish: plain Python floats are fastest)."""

    def __init__(self, params: TankParams, rng: np.random.Generator):
        self.p, self.rng = params, rng
        n = params.num_fish
        margin = params.wall_margin
        self.y = list(rng.uniform(margin, TANK_HEIGHT - margin, n))
        self.x = list(rng.uniform(margin, TANK_WIDTH - margin, n))
        self.heading = list(rng.uniform(-np.pi, np.pi, n))
        self.base_speed = list(params.calm_speed * rng.uniform(0.8, 1.2, n))
        self.speed_factor = [1.0] * n  # slowly varying calm speed, relative
        self.burst_amplitude = [0.0] * n
        self.burst_age = [10**9] * n  # frames since the last burst onset
        self.target = [-1] * n  # the fish being chased, while chasing
        # Scheduled onsets: (frame, fish, cause, the other fish).
        self.pending: list[tuple[int, int, int, int]] = []
        self.together = {(i, j): 0 for i in range(n) for j in range(i + 1, n)}  # frames spent close
        self.tried: set[tuple[int, int]] = set()  # pairs whose current encounter already had its chance
        self.bursts: list[tuple[int, int, int]] = []

    def run(self, num_frames: int) -> Trajectories:
        p, n = self.p, self.p.num_fish
        turn = self.rng.normal(0.0, p.turn_noise, (num_frames, n)).tolist()
        speed_noise = self.rng.normal(0.0, 1.0, (num_frames, n)).tolist()
        spontaneous = (self.rng.random((num_frames, n)) < p.spontaneous_per_second / p.fps).tolist()
        positions = np.empty((num_frames, n, 2), np.float32)
        headings = np.empty((num_frames, n), np.float32)
        speeds = np.empty((num_frames, n), np.float32)
        for t in range(num_frames):
            self._trigger(t, spontaneous[t])
            speed = self._move(turn[t], speed_noise[t])
            positions[t, :, 0], positions[t, :, 1] = self.y, self.x
            headings[t], speeds[t] = self.heading, speed
        bursts = np.array(sorted(self.bursts), np.int64).reshape(-1, 3)
        return Trajectories(
            positions,
            headings,
            speeds,
            {
                'frame': bursts[:, 0],
                'fish': bursts[:, 1].astype(np.int32),
                'cause': bursts[:, 2].astype(np.int8),
            },
        )

    def _free(self, fish: int) -> bool:
        return self.burst_age[fish] >= self.p.refractory_frames and not any(
            f == fish for _, f, _, _ in self.pending
        )

    def _trigger(self, t: int, spontaneous: list[bool]) -> None:
        p = self.p
        for (i, j), frames_close in self.together.items():
            distance = math.hypot(self.y[i] - self.y[j], self.x[i] - self.x[j])
            close = distance < p.close_distance
            self.together[i, j] = frames_close + 1 if close else 0
            if not close:
                self.tried.discard((i, j))
            elif (
                frames_close + 1 >= p.close_frames
                and (i, j) not in self.tried
                and self._free(i)
                and self._free(j)
            ):
                self.tried.add((i, j))
                if self.rng.random() < p.chase_probability:
                    chaser, chased = (i, j) if self.rng.random() < 0.5 else (j, i)
                    onset = t + int(self.rng.integers(p.latency_frames[0], p.latency_frames[1] + 1))
                    flee = onset + int(self.rng.integers(p.flee_delay_frames[0], p.flee_delay_frames[1] + 1))
                    self.pending += [(onset, chaser, 0, chased), (flee, chased, 1, chaser)]
        for fish in range(p.num_fish):
            if spontaneous[fish] and self._free(fish):
                self.pending.append((t, fish, 2, -1))
        due = [event for event in self.pending if event[0] <= t]
        self.pending = [event for event in self.pending if event[0] > t]
        for _, fish, cause, other in due:
            self._start_burst(t, fish, cause, other)

    def _start_burst(self, t: int, fish: int, cause: int, other: int) -> None:
        p = self.p
        self.bursts.append((t, fish, cause))
        self.burst_age[fish] = 0
        if cause == 0:  # chase: head for the other fish at full burst speed
            self.target[fish] = other
            self.heading[fish] = self._bearing(fish, other)
            self.burst_amplitude[fish] = p.burst_speed
        elif cause == 1:  # flee: away from the chaser, a little less fast
            self.heading[fish] = self._bearing(other, fish) + self.rng.normal(0.0, 0.5)
            self.burst_amplitude[fish] = p.burst_speed * self.rng.uniform(0.6, 1.0)
        else:
            self.heading[fish] += self.rng.normal(0.0, 1.0)
            self.burst_amplitude[fish] = p.burst_speed * self.rng.uniform(0.5, 1.0)

    def _bearing(self, source: int, destination: int) -> float:
        return math.atan2(self.y[destination] - self.y[source], self.x[destination] - self.x[source])

    def _move(self, turn: list[float], speed_noise: list[float]) -> list[float]:
        p = self.p
        relax = 1.0 / p.fps  # the calm speed factor relaxes to 1 over about a second
        speeds = []
        for fish in range(p.num_fish):
            age = self.burst_age[fish]
            if self.target[fish] >= 0 and age < p.burst_frames:
                self.heading[fish] = self._bearing(fish, self.target[fish])
            else:
                self.target[fish] = -1
                self.heading[fish] += turn[fish]
            factor = self.speed_factor[fish]
            factor += relax * (1.0 - factor) + p.calm_speed_jitter * math.sqrt(2 * relax) * speed_noise[fish]
            self.speed_factor[fish] = factor = min(max(factor, 0.2), 2.0)
            speed = self.base_speed[fish] * factor + self.burst_amplitude[fish] * math.exp(
                -age / p.burst_decay_frames
            )
            self.burst_age[fish] = age + 1
            self.y[fish], self.x[fish], self.heading[fish] = self._step_inside_walls(
                self.y[fish], self.x[fish], self.heading[fish], speed
            )
            speeds.append(speed)
        return speeds

    def _step_inside_walls(
        self, y: float, x: float, heading: float, speed: float
    ) -> tuple[float, float, float]:
        """Moves one fish; at a wall it turns back like a reflected ray."""
        margin = self.p.wall_margin
        dy, dx = speed * math.sin(heading), speed * math.cos(heading)
        y, x = y + dy, x + dx
        if not margin <= x <= TANK_WIDTH - margin:
            x = min(max(x, margin), TANK_WIDTH - margin)
            dx = -dx
        if not margin <= y <= TANK_HEIGHT - margin:
            y = min(max(y, margin), TANK_HEIGHT - margin)
            dy = -dy
        return y, x, math.atan2(dy, dx)


def render(
    trajectories: Trajectories,
    *,
    height: int = 120,
    width: int = 160,
    seed: int = 0,
    params: TankParams | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[np.ndarray]:
    """Renders frames start … stop−1 at height × width, yielding uint8 chunks of frames in order.

    Each fish is an elongated Gaussian, a little wider and brighter at the head, whose covariance is widened
    by a pixel's own variance (1/12) so that it stays anti-aliased at any resolution. The global brightness
    flickers slowly; the sensor adds noise (a sum of two uniform integers 0…3: std 1.6 grey levels). A frame
    is the same whichever range it is rendered in.
    """
    params = params or TankParams()
    num_frames = len(trajectories.positions)
    stop = num_frames if stop is None else stop
    if not 0 <= start <= stop <= num_frames:
        raise ValueError(f'frame range [{start}, {stop}) is not within the {num_frames} simulated frames')
    scale_y, scale_x = height / TANK_HEIGHT, width / TANK_WIDTH
    gain = 1.0 + params.flicker * _smooth_noise(num_frames, params.fps / 2, seed)
    for chunk_index in range(start // _RENDER_CHUNK, -(-stop // _RENDER_CHUNK)):
        first = chunk_index * _RENDER_CHUNK
        last = min(first + _RENDER_CHUNK, num_frames)
        canvas, pad = _render_fish(
            trajectories.positions[first:last],
            trajectories.headings[first:last],
            height,
            width,
            scale_y,
            scale_x,
            params,
        )
        signal = canvas[:, pad : pad + height, pad : pad + width]
        noise_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, chunk_index)))
        noise_bits = noise_rng.integers(0, 256, signal.shape, np.uint8)
        noise = (noise_bits & 3) + ((noise_bits >> 2) & 3)  # 0 … 6, mean 3
        chunk_gain = gain[first:last, None, None].astype(np.float32)
        # +0.5 then truncation rounds; the noise mean 3 is taken back from the background level.
        frames = (signal + np.float32(params.background)) * chunk_gain + (noise - np.float32(3.0 - 0.5))
        np.clip(frames, 0, 255, out=frames)
        yield frames[max(start - first, 0) : stop - first].astype(np.uint8)


def _render_fish(
    positions: np.ndarray,
    headings: np.ndarray,
    height: int,
    width: int,
    scale_y: float,
    scale_x: float,
    params: TankParams,
) -> tuple[np.ndarray, int]:
    """Adds each fish's splat, on a patch around it, into a zero canvas padded so that no patch is clipped."""
    num_frames, num_fish = headings.shape
    reach = 0.5 * params.body_length + 2.0 * params.body_width  # tank units from centre to the faintest pixel
    patch = int(np.ceil(2 * reach * max(scale_y, scale_x))) + 2
    pad = patch
    canvas = np.zeros((num_frames, height + 2 * pad, width + 2 * pad), np.float32)
    offsets = np.arange(patch, dtype=np.float32)
    frame_index = np.arange(num_frames)[:, None, None]
    sigma_long = params.body_length / 4
    sigma_wide = params.body_width / 2.5
    for fish in range(num_fish):
        centre_y = positions[:, fish, 0] * scale_y  # in pixels of the rendered frame
        centre_x = positions[:, fish, 1] * scale_x
        top = np.floor(centre_y).astype(np.int64) - patch // 2
        left = np.floor(centre_x).astype(np.int64) - patch // 2
        # Pixel centres relative to the fish centre, back in tank units so the body keeps its shape.
        rel_y = ((top[:, None] + offsets + 0.5) - centre_y[:, None]) / scale_y
        rel_x = ((left[:, None] + offsets + 0.5) - centre_x[:, None]) / scale_x
        cos, sin = np.cos(headings[:, fish])[:, None, None], np.sin(headings[:, fish])[:, None, None]
        along = rel_x[:, None, :] * cos + rel_y[:, :, None] * sin
        across = -rel_x[:, None, :] * sin + rel_y[:, :, None] * cos
        # The head (positive `along`) is wider and brighter than the tail.
        taper = 1.0 + 0.35 * np.tanh(along / sigma_long)
        var_long = sigma_long**2 + _pixel_variance(scale_y, scale_x)
        var_wide = (sigma_wide * taper) ** 2 + _pixel_variance(scale_y, scale_x)
        peak = params.fish_brightness * taper * sigma_wide / np.sqrt(var_wide)
        splat = peak * np.exp(-0.5 * (along**2 / var_long + across**2 / var_wide))
        rows = (top[:, None] + pad + offsets.astype(np.int64))[:, :, None]
        cols = (left[:, None] + pad + offsets.astype(np.int64))[:, None, :]
        canvas[frame_index, rows, cols] += splat.astype(np.float32)
    return canvas, pad


def _pixel_variance(scale_y: float, scale_x: float) -> float:
    """Variance of a uniform pixel footprint, in tank units² (taking the coarser axis)."""
    pixel = 1.0 / min(scale_y, scale_x)
    return pixel**2 / 12


def _smooth_noise(num_frames: int, correlation_frames: float, seed: int) -> np.ndarray:
    """Unit-variance noise correlated over about `correlation_frames` (an AR(1) process)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    keep = np.exp(-1.0 / correlation_frames)
    innovations = rng.normal(0.0, np.sqrt(1 - keep**2), num_frames)
    values = np.empty(num_frames)
    value = rng.normal()
    for t in range(num_frames):
        value = keep * value + innovations[t]
        values[t] = value
    return values


def proximity_score(positions: np.ndarray, window_frames: int = 15) -> np.ndarray:
    """An oracle feature for analysis: −(smallest distance between two fish over the last window), per frame.

    Computed from the true positions (T, N, 2), which no model is given; NaN before a full window.
    """
    num_frames, num_fish, _ = positions.shape
    first, second = np.triu_indices(num_fish, 1)
    gaps = np.linalg.norm(positions[:, first] - positions[:, second], axis=-1).min(axis=1)
    score = np.full(num_frames, np.nan)
    if num_frames >= window_frames:
        score[window_frames - 1 :] = -sliding_window_view(gaps, window_frames).min(axis=1)
    return score
