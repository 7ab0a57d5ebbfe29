"""visionary-serenity: ConvLSTM2D(16) -> MaxPool 2x2 -> BatchNorm -> ConvLSTM2D(32) -> GlobalMaxPool2D ->
Dense(1). 66,849 parameters."""

from convlstm_jax import config as base


def get_config(arg: str | None = None):
    c = base.base_config()
    c.model.filters = (16, 32)
    c.model.batchnorm_last = False
    return base.apply_variant(c, arg)
