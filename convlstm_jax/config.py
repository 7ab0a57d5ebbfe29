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
    c.model.remat = True  # Recompute the gates in the backward pass: less memory, and faster on XLA:CPU.
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
    # Sources and storage (data/sources.py, data/dataset.py; the data helper's fields).
    c.data.fps = 30.0  # frame rate of a frames folder (videos and the synthetic tank carry their own)
    c.data.horizon_seconds = 0.0  # > 0: the horizon in seconds, converted with the source's frame rate
    c.data.split_fractions = (0.834, 0.067, 0.099)  # a video cut chronologically, in the 2021 proportions
    c.data.label_file = ''  # '' = the ỹ rule; else per-frame 0/1 labels (.npy/.csv) beside each recording
    c.data.memmap_bytes = 2**31  # a split with more frame bytes is memory-mapped from its cached .npy
    c.data.write_tfds = False  # True: load_splits also writes the TFDS dataset (or `prepare --tfds`)

    # Training (train.py).
    c.batch_size = 4  # global batch over all devices and processes
    c.eval_batch_size = 16
    c.num_epochs = 5
    c.steps_per_epoch = -1  # -1: one pass over the training samples
    c.learning_rate = 8e-5
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-7  # tf.keras semantics: added to sqrt(v) before bias correction
    # Weights of class 0 and 1, or 'auto' (2021 rule from train labels). A FieldReference of type object, so
    # that a pair and 'auto' are both accepted (a plain tuple field rejects a string override).
    c.class_weights = ml_collections.FieldReference((0.133, 0.866), field_type=object)
    c.l1 = 0.0
    c.l2 = 0.0
    # Parameters the L1L2 penalty applies to, as glob patterns over '/'-joined parameter paths. Keras's
    # `kernel_regularizer` on ConvLSTM2D covers the input kernels only (recurrent_regularizer is separate).
    c.regularized_kernels = ('convlstm_*/kernel',)
    c.checkpoint_every_steps = 0  # 0: checkpoints at evaluations (and on a stop signal) only
    c.eval_every_steps = 0  # 0: evaluate at the end of each epoch only
    c.log_every_steps = 50
    c.keep_checkpoints = 2  # latest N, besides the best by validation loss and by validation AUC
    c.init_from = ''  # a model directory (e.g. an imported Keras checkpoint) to start from
    return c


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """`quick`: learns the synthetic tank on a 2-core CPU in ~10 minutes. `smoke`: a few steps, for tests."""
    if not arg:
        return c
    if arg == 'quick':
        # Frames at 0.3× the 2021 size and 20 time steps (80 frames of history: enough to see two fish stay
        # together before a chase), a shorter recording, a fixed step budget and a 12.5× higher learning rate.
        c.data.height, c.data.width = 36, 48
        c.data.time_steps = 20
        c.data.synthetic.split_frames = (12000, 2000, 2000)
        c.batch_size = 8
        c.num_epochs = 3
        c.steps_per_epoch = 200
        c.learning_rate = 1e-3
        c.class_weights = 'auto'
        c.eval_every_steps = 0
    elif arg == 'smoke':
        c.data.height, c.data.width = 16, 20
        c.data.time_steps = 4
        c.data.horizon = 6
        c.data.synthetic.split_frames = (120, 60, 60)
        c.data.write_tfds = False  # importing TensorFlow alone takes seconds
        c.batch_size = 4
        c.eval_batch_size = 8
        c.num_epochs = 1
        c.steps_per_epoch = 3
        c.log_every_steps = 1
    else:
        raise ValueError(f'unknown config variant {arg!r}: expected one of quick, smoke')
    return c
