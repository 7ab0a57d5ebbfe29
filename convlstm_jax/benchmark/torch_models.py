"""The 2021 models in PyTorch, with this project's semantics, for the benchmark's torch rows.

A ConvLSTM cell in the usual PyTorch form: an input and a recurrent convolution, each giving the four gates
(Keras order i, f, c, o) from one output, no bias, 'valid' input and 'same' recurrent padding, and Keras 2's
hard_sigmoid clip(0.2x + 0.5, 0, 1) as the recurrent activation (this project's 'hard_sigmoid'). Between
layers a 2×2 'valid' max-pool and BatchNorm per time step; BatchNorm is tf.keras's (center=False,
scale=False, epsilon 1e-3, momentum 0.99: torch's momentum 0.01, and like TF it normalizes with the biased
batch variance and moves towards the unbiased one). The convolutions are the same as the project's, so the
FLOPs are too. `load_flax_variables` copies this project's variables in (the parity test's check).

The input convolution runs once over all B·T frames before the time loop (one large convolution instead of
T small ones, the same FLOPs); the recurrent one runs per step. torch is imported only with this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2 / tf.keras hard sigmoid, as this project's layer computes it: clip(0.2·x + 0.5, 0, 1)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def hard_sigmoid_keras3(x: torch.Tensor) -> torch.Tensor:
    """Keras 3 hard sigmoid: relu6(x + 3) / 6."""
    return functional.relu6(x + 3.0) / 6.0


ACTIVATIONS = {
    'tanh': torch.tanh,
    'sigmoid': torch.sigmoid,
    'hard_sigmoid': hard_sigmoid,
    'hard_sigmoid_keras3': hard_sigmoid_keras3,
    'relu': torch.relu,
    'linear': lambda x: x,
}


def _activation(name: str) -> Any:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f'unknown activation {name!r}: expected one of {", ".join(sorted(ACTIVATIONS))}'
        ) from None


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class ConvLSTM2D(nn.Module):
    """Keras ConvLSTM2D over (B, T, C, H, W): the last output (B, F, H', W'), or all (B, T, F, H', W')."""

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel_size: int | Sequence[int],
        padding: str,
        activation: str,
        recurrent_activation: str,
        return_sequences: bool,
    ) -> None:
        super().__init__()
        if padding not in ('valid', 'same'):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        kernel = _pair(kernel_size)
        self.filters = filters
        self.input_conv = nn.Conv2d(in_channels, 4 * filters, kernel, padding=padding, bias=False)
        self.recurrent_conv = nn.Conv2d(filters, 4 * filters, kernel, padding='same', bias=False)
        self.activation = _activation(activation)
        self.recurrent_activation = _activation(recurrent_activation)
        self.return_sequences = return_sequences

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps = x.shape[:2]
        z_inputs = self.input_conv(x.flatten(0, 1))
        z_inputs = z_inputs.unflatten(0, (batch, steps))
        h = z_inputs.new_zeros(batch, self.filters, *z_inputs.shape[-2:])
        c = torch.zeros_like(h)
        outputs = []
        for t in range(steps):
            z = z_inputs[:, t] + self.recurrent_conv(h)
            i, f, g, o = z.chunk(4, dim=1)
            c = self.recurrent_activation(f) * c + self.recurrent_activation(i) * self.activation(g)
            h = self.recurrent_activation(o) * self.activation(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1) if self.return_sequences else h


def keras_batchnorm(features: int) -> nn.BatchNorm2d:
    """tf.keras BatchNormalization(center=False, scale=False): epsilon 1e-3, moving averages at 0.99."""
    return nn.BatchNorm2d(features, eps=1e-3, momentum=0.01, affine=False)


class Classifier(nn.Module):
    """Clips (B, T, H, W, C), uint8 or float in [0, 1], → logits (B,), as this project's Classifier."""

    def __init__(self, model_config: Mapping[str, Any], channels: int) -> None:
        super().__init__()
        if model_config.get('use_bias', False):
            raise ValueError('the torch twin has no bias (the 2021 models use none): expected use_bias False')
        filters = tuple(model_config['filters'])
        self.recurrences = nn.ModuleList()
        self.norms = nn.ModuleList()
        for index, count in enumerate(filters):
            last = index == len(filters) - 1
            self.recurrences.append(
                ConvLSTM2D(
                    channels,
                    count,
                    model_config['kernel_size'],
                    model_config['padding'],
                    model_config['activation'],
                    model_config['recurrent_activation'],
                    return_sequences=not last,
                )
            )
            if not last or model_config['batchnorm_last']:
                self.norms.append(keras_batchnorm(count))
            channels = count
        self.dense = nn.Linear(channels, 1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.float() / 255.0 if clips.dtype == torch.uint8 else clips.float()
        x = x.permute(0, 1, 4, 2, 3)  # (B, T, C, H, W): torch's channels-first convolutions
        for index, recurrence in enumerate(self.recurrences):
            x = recurrence(x)
            if index < len(self.recurrences) - 1:
                batch, steps = x.shape[:2]
                per_frame = functional.max_pool2d(x.flatten(0, 1), 2)  # 2×2 'valid', stride 2
                x = self.norms[index](per_frame).unflatten(0, (batch, steps))
            elif index < len(self.norms):
                x = self.norms[index](x)
        features = torch.amax(x, dim=(-2, -1))
        return self.dense(features)[:, 0]


def load_flax_variables(model: Classifier, variables: Mapping[str, Any]) -> None:
    """Copies this project's Classifier variables ({'params', 'batch_stats'}) into the torch twin."""
    params = variables['params']

    def tensor(value: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(value, dtype=np.float32))

    with torch.no_grad():
        for index, recurrence in enumerate(model.recurrences):
            layer = params[f'convlstm_{index}']
            # flax/Keras kernels are (kh, kw, in, out); torch's are (out, in, kh, kw).
            recurrence.input_conv.weight.copy_(tensor(layer['kernel']).permute(3, 2, 0, 1))
            recurrence.recurrent_conv.weight.copy_(tensor(layer['recurrent_kernel']).permute(3, 2, 0, 1))
        model.dense.weight.copy_(tensor(params['dense']['kernel']).T)
        model.dense.bias.copy_(tensor(params['dense']['bias']))
        stats = variables.get('batch_stats', {})
        for index, norm in enumerate(model.norms):
            norm.running_mean.copy_(tensor(stats[f'batchnorm_{index}']['mean']))
            norm.running_var.copy_(tensor(stats[f'batchnorm_{index}']['var']))


def class_weighted_bce(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: Sequence[float]
) -> torch.Tensor:
    """Σ w[y]·BCE / batch from logits: this project's training loss (tf.keras's SUM_OVER_BATCH_SIZE)."""
    weights = torch.where(labels > 0.5, class_weights[1], class_weights[0])
    per_sample = functional.binary_cross_entropy_with_logits(logits, labels, reduction='none')
    return torch.sum(weights * per_sample) / logits.shape[0]
