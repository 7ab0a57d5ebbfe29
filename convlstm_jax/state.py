"""The training state: model variables, the optimizer state, the step and the dropout key, as one pytree, and
the two checkpoint items it is saved as."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from convlstm_jax import models
from convlstm_jax.optim import KerasAdamState, make_optimizer

PyTree = Any


@flax.struct.dataclass
class TrainState:
    params: PyTree
    batch_stats: PyTree
    opt_state: KerasAdamState
    step: jax.Array  # int32 scalar: training steps done
    rng: jax.Array  # uint32 (2,) key; step s draws its dropout masks from fold_in(rng, s)

    @property
    def variables(self) -> dict[str, PyTree]:
        return {'params': self.params, 'batch_stats': self.batch_stats}


def state_items(state: TrainState) -> tuple[dict, dict]:
    """The two checkpoint items of a state: the model's variables, and what exact resumption adds."""
    train_state = {'opt_state': state.opt_state._asdict(), 'step': state.step, 'rng': state.rng}
    return state.variables, train_state


def state_from_items(variables: dict, train_state: dict) -> TrainState:
    return TrainState(
        params=variables['params'],
        batch_stats=variables.get('batch_stats', {}),
        opt_state=KerasAdamState(**train_state['opt_state']),
        step=train_state['step'],
        rng=train_state['rng'],
    )


def input_shape(data_config) -> tuple[int, int, int, int]:
    """(T, H, W, C) of one clip."""
    return (data_config.time_steps, data_config.height, data_config.width, data_config.frames_per_step)


def init_variables(config, seed: int) -> dict[str, PyTree]:
    """Freshly initialized model variables (Keras initializers), as numpy arrays."""
    model = models.build_model(config.model)
    clips = jnp.zeros((1, *input_shape(config.data)), jnp.uint8)
    variables = model.init(jax.random.PRNGKey(seed), clips, train=False)
    variables = flax.core.unfreeze(variables)
    variables.setdefault('batch_stats', {})
    return jax.device_get(variables)


def create_train_state(config, variables: dict[str, PyTree], rng: jax.Array) -> TrainState:
    """A host (numpy) TrainState at step 0 from model variables."""
    params = variables['params']
    return jax.device_get(
        TrainState(
            params=params,
            batch_stats=variables.get('batch_stats', {}),
            opt_state=make_optimizer(config).init(params),
            step=jnp.zeros([], jnp.int32),
            rng=rng,
        )
    )
