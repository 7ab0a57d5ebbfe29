"""The 2021 recipe as one ml_collections config, and the variants every model config shares.

`configs/one_layer.py` and `configs/two_layer.py` start from `base_config()`, set the model, and call
`apply_variant(config, arg)` so that `--config configs/two_layer.py:quick` works for both.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Defaults: the 2021 training recipe (reference-system.md) on the built-in synthetic tank."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # The classifier (models.py). `filters` has one entry per ConvLSTM2D layer.
    c.model = ml_collections.ConfigDict()
    c.model.filters = (16,)
    c.model.kernel_size = 3
    c.model.padding = 'valid'
    c.model.activation = 'tanh'
    c.model.recurrent_activation = 'hard_sigmoid'
    c.model.use_bias = False
    c.model.dropout = 0.0
    c.model.recurrent_dropout = 0.0
    c.model.batchnorm_last = True  # BatchNorm after the last ConvLSTM (the 1-layer model has it).
    c.model.compute_dtype = 'float32'  # 'bfloat16': bf16 convolutions, fp32 params, BatchNorm and loss.
    c.model.remat = False  # Recompute the gates in the backward pass instead of storing them.
    c.model.unroll = 1  # Time steps per scan iteration.

    # Data (convlstm_jax/data). With source 'synthetic' a deterministic tank is generated locally.
    c.data = ml_collections.ConfigDict()
    c.data.source = 'synthetic'  # 'synthetic' | 'frames' (a folder per split) | 'video' | 'tfds'
    c.data.path = ''  # frames root or video file(s) for the non-synthetic sources
    c.data.data_dir = ''  # where prepared datasets are cached ('' = ~/.cache/convlstm_jax)
    c.data.height = 120
    c.data.width = 160
    c.data.time_steps = 30  # n: time steps per clip
    c.data.frames_per_step = 4  # frames stacked as channels per time step (1 = single-channel form)
    c.data.horizon = 45  # h: frames ahead in which a burst must start
    c.data.label_b = 0.1
    c.data.label_c = 0.001
    c.data.resize = 'nearest'  # 'nearest' (as PIL, reproduces 2021) | 'area'
    c.data.pipeline = 'tfdata'  # 'tfdata' | 'numpy' (TensorFlow-free)
    c.data.flips = True
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.seed = 0
    c.data.synthetic.num_fish = 6
    c.data.synthetic.split_frames = (44956, 3593, 5367)  # train / validation / test, as in 2021

    # Training (train.py).
    c.batch_size = 4  # global batch over all devices and processes
    c.eval_batch_size = 16
    c.num_epochs = 5
    c.steps_per_epoch = -1  # -1: one pass over the training samples
    c.learning_rate = 8e-5
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-7  # tf.keras semantics: added to sqrt(v) before bias correction
    c.class_weights = (0.133, 0.866)  # weights of class 0 and 1, or 'auto' (2021 rule from train labels)
    c.l1 = 0.0
    c.l2 = 0.0
    c.eval_every_steps = 0  # 0: evaluate at the end of each epoch only
    c.log_every_steps = 50
    c.keep_checkpoints = 2  # latest N, besides the best by validation loss and by validation AUC
    c.init_from = ''  # a model directory (e.g. an imported Keras checkpoint) to start from
    return c


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """`quick`: learns the synthetic tank on a 2-core CPU in about 10 minutes; `smoke`: a few steps for tests."""
    if not arg:
        return c
    if arg == 'quick':
        # Quarter-resolution frames, a shorter recording, and a fixed step budget.
        c.data.height, c.data.width = 48, 64
        c.data.synthetic.split_frames = (12000, 3000, 3000)
        c.batch_size = 8
        c.num_epochs = 3
        c.steps_per_epoch = 400
        c.learning_rate = 1e-3
        c.class_weights = 'auto'
        c.eval_every_steps = 0
    elif arg == 'smoke':
        c.data.height, c.data.width = 16, 20
        c.data.time_steps = 4
        c.data.horizon = 6
        c.data.synthetic.split_frames = (120, 60, 60)
        c.batch_size = 4
        c.eval_batch_size = 8
        c.num_epochs = 1
        c.steps_per_epoch = 3
        c.log_every_steps = 1
    else:
        raise ValueError(f'unknown config variant {arg!r}: expected one of quick, smoke')
    return c
