"""The training state: model variables, the optimizer state, the step, the dropout key and the member
hyper-parameters, as one pytree, and the two checkpoint items it is saved as. A population's state has a
leading member axis on every leaf (population.py)."""

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
    # Per-member learning rate, class weights, penalties and dropout rates (population.hparams): from the
    # config at every start, never checkpointed.
    hparams: PyTree
    # A population's members whose loss turned NaN or Inf, kept at their last good step (bool); None solo,
    # where divergence stops the run.
    frozen: jax.Array | None = None

    @property
    def variables(self) -> dict[str, PyTree]:
        return {'params': self.params, 'batch_stats': self.batch_stats}


def state_items(state: TrainState) -> tuple[dict, dict]:
    """The two checkpoint items of a state: the model's variables, and what exact resumption adds."""
    train_state = {'opt_state': state.opt_state._asdict(), 'step': state.step, 'rng': state.rng}
    if state.frozen is not None:
        train_state['frozen'] = state.frozen
    return state.variables, train_state


def state_from_items(variables: dict, train_state: dict, hparams: PyTree) -> TrainState:
    return TrainState(
        params=variables['params'],
        batch_stats=variables.get('batch_stats', {}),
        opt_state=KerasAdamState(**train_state['opt_state']),
        step=train_state['step'],
        rng=train_state['rng'],
        hparams=hparams,
        frozen=train_state.get('frozen'),
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


def create_train_state(config, variables: dict[str, PyTree], rng: jax.Array, hparams: PyTree) -> TrainState:
    """A host (numpy) TrainState of one model at step 0 from its variables."""
    params = variables['params']
    return jax.device_get(
        TrainState(
            params=params,
            batch_stats=variables.get('batch_stats', {}),
            opt_state=make_optimizer(config).init(params),
            step=jnp.zeros([], jnp.int32),
            rng=rng,
            hparams=hparams,
        )
    )
