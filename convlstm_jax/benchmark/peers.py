"""The peer rows: tf_keras, Keras 3 on each backend, and PyTorch (eager and torch.compile).

Each runs the same model (`keras_models.keras_classifier`, `torch_models.Classifier`) on the same data as
this project's rows, in its own subprocess. TensorFlow always runs with its GPUs hidden; torch and Keras 3 on
JAX or torch use the accelerator where there is one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import Any

import numpy as np

from convlstm_jax.benchmark.harness import (
    FRAMEWORK_PACKAGES,
    FRAMEWORKS,
    KERAS3_BACKENDS,
    HostMemory,
    RowSpec,
    TorchCudaMemory,
    jax_memory_probe,
    make_batches,
    measurements,
    row_config,
    time_steps,
    versions,
)

PEER_VERSIONS = ('tensorflow', 'tf_keras', 'keras', 'jax', 'torch')


def available_frameworks() -> list[str]:
    """Frameworks whose packages are installed here (Keras 3 rows need keras ≥ 3), in table order."""
    found = []
    for framework in FRAMEWORKS:
        packages = FRAMEWORK_PACKAGES[framework]
        if all(importlib.util.find_spec(p) is not None for p in packages):
            if 'keras' not in packages or _keras_major() >= 3:
                found.append(framework)
    return found


def _keras_major() -> int:
    try:
        return int(importlib.metadata.version('keras').split('.')[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


def _check_plain_row(spec: RowSpec) -> None:
    if spec.dtype != 'float32' or spec.remat or spec.input != 'memory':
        raise ValueError(f'{spec.framework} rows are float32, without remat, from memory; got {spec.label()}')


# ---------------------------------------------------------------------------------------------------- Keras


def import_keras(framework: str) -> Any:
    """tf_keras (Keras 2) or Keras 3 on the framework's backend; TensorFlow always with its GPUs hidden."""
    if framework in ('tf_keras', 'keras3-tensorflow'):
        from convlstm_jax.tf_cpu import import_tensorflow

        import_tensorflow()
    if framework == 'tf_keras':
        import tf_keras

        return tf_keras
    backend = KERAS3_BACKENDS[framework]
    if os.environ.get('KERAS_BACKEND') != backend:
        raise RuntimeError(f'{framework} needs KERAS_BACKEND={backend} set before keras is imported')
    import keras

    return keras


def keras_memory_probe(framework: str) -> Any:
    if framework == 'keras3-torch':
        import torch

        if torch.cuda.is_available():
            return TorchCudaMemory(torch)
    if framework == 'keras3-jax':
        return jax_memory_probe()
    return HostMemory()


def keras_device(framework: str) -> str:
    if framework == 'keras3-jax':
        from convlstm_jax.benchmark.jax_rows import jax_device_name

        return jax_device_name()
    if framework == 'keras3-torch':
        return torch_device_name()
    return 'cpu'  # TensorFlow always runs with its GPUs hidden here


def run_keras(spec: RowSpec) -> dict[str, Any]:
    from convlstm_jax.benchmark.keras_models import compile_keras_model, keras_classifier

    _check_plain_row(spec)
    keras = import_keras(spec.framework)
    # Scaled once, before timing, as the 2021 pipeline fed Keras; labels (B, 1) like the model's output.
    batches = [
        (clips.astype(np.float32) / 255.0, labels[:, None])
        for clips, labels in make_batches(spec.shape, spec.batch, spec.seed)
    ]
    config = row_config(spec)
    memory = keras_memory_probe(spec.framework)
    model = keras_classifier(config.model, spec.shape, logits=False, keras=keras)
    compile_keras_model(keras, model, config)
    negative_weight, positive_weight = config.class_weights
    weights = {0: negative_weight, 1: positive_weight}

    def step(i: int) -> None:
        clips, labels = batches[i % len(batches)]
        if spec.mode == 'train':
            model.train_on_batch(clips, labels, class_weight=weights)
        else:
            model.predict_on_batch(clips)

    timing = time_steps(step, spec, memory)
    return {
        **measurements(timing, memory, spec, config.model),
        'jit_compile': str(getattr(model, 'jit_compile', None)),
        'device': keras_device(spec.framework),
        'versions': versions(*PEER_VERSIONS),
    }


# ---------------------------------------------------------------------------------------------------- torch


def torch_device_name() -> str:
    import torch

    return 'cuda:' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'


def run_torch(spec: RowSpec) -> dict[str, Any]:
    """The torch twin (`torch_models.Classifier`), eager or under torch.compile, on the shared batches.

    Training: class-weighted BCE from logits and Adam with the config's hyper-parameters; the uint8 clips go
    to the device once, before timing, and are scaled inside the model as this project's are.
    """
    import torch

    from convlstm_jax.benchmark import torch_models

    _check_plain_row(spec)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    batches = [
        (torch.from_numpy(clips).to(device), torch.from_numpy(labels).to(device))
        for clips, labels in make_batches(spec.shape, spec.batch, spec.seed)
    ]
    config = row_config(spec)
    memory = TorchCudaMemory(torch) if device.type == 'cuda' else HostMemory()
    torch.manual_seed(spec.seed)
    model = torch_models.Classifier(config.model, channels=spec.shape[-1]).to(device)
    forward = torch.compile(model) if spec.framework == 'torch-compile' else model
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_b1, config.adam_b2),
        eps=config.adam_eps,
    )

    def train_step(clips: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch_models.class_weighted_bce(forward(clips), labels, config.class_weights)
        loss.backward()
        optimizer.step()

    model.train(spec.mode == 'train')  # BatchNorm in training or inference mode, as the other rows

    def step(i: int) -> None:
        clips, labels = batches[i % len(batches)]
        if spec.mode == 'train':
            train_step(clips, labels)
        else:
            with torch.no_grad():
                forward(clips)
        if device.type == 'cuda':
            torch.cuda.synchronize()

    timing = time_steps(step, spec, memory)
    return {
        **measurements(timing, memory, spec, config.model),
        'device': torch_device_name(),
        'torch_threads': torch.get_num_threads(),
        'versions': versions('torch'),
    }
