"""upbeat-snowflake-91: ConvLSTM2D(16) -> BatchNorm -> GlobalMaxPool2D -> Dense(1). 11,537 parameters."""

from convlstm_jax import config as base


def get_config(arg: str | None = None):
    c = base.base_config()
    c.model.filters = (16,)
    c.model.batchnorm_last = True
    return base.apply_variant(c, arg)
