"""A loaded split: the frames of one part of the data at model resolution, with ỹ, labels and valid samples."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Split:
    """One split held in memory (or memory-mapped), ready for clip slicing.

    `samples` are the target frames t whose full history (4n frames ending at t) lies in t's recording and
    whose label is defined (the horizon t+1 … t+1+h lies in the recording too).
    """

    name: str
    frames: np.ndarray  # uint8 (T, H, W) at model resolution (maybe a np.memmap)
    y_tilde: np.ndarray  # float64 (T,) computed at stored resolution
    labels: np.ndarray  # int8 (T,)
    recording: np.ndarray  # int32 (T,) recording id of each frame (a clip never crosses two)
    samples: np.ndarray  # int64 sorted valid target frame indices t
