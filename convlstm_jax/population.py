"""A population: K models trained in one run, in one step that `jax.vmap`s over a leading member axis.

The members share the architecture, the data order and every batch (`config.seed`); member i initialises
and draws its dropout masks from `init_seed + i` (`config.init_seed`, -1 meaning `config.seed`), so member i
is the solo run with `--config.init_seed=<init_seed + i>`. `config.member_overrides` gives members their
own values of the fields that keep every shape: {field: K values}, e.g. {'learning_rate': (1e-3, 3e-4)}.

Those per-member values travel in the train state as a small pytree, `hparams`, so that the vmapped step reads
each member's own: the learning rate reaches the Adam as an argument, the class weights, L1/L2 factors and
dropout rates reach the loss and the model. A solo run (population 1) has the same pytree without the member
axis. The pytree comes from the config at every start and is never checkpointed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from convlstm_jax.config_checks import DROPOUT_FIELDS, PER_MEMBER_FIELDS
from convlstm_jax.losses import resolve_class_weights

PyTree = Any


def size(config) -> int:
    return int(config.population)


def is_population(config) -> bool:
    """True when the state carries a member axis (population > 1)."""
    return size(config) > 1


def init_seeds(config) -> list[int]:
    """Member i's initialisation seed: init_seed + i, with init_seed -1 meaning config.seed."""
    first = int(config.seed) if int(config.init_seed) == -1 else int(config.init_seed)
    return [first + i for i in range(size(config))]


def member_values(config, member: int) -> dict[str, Any]:
    """The per-member fields of member `member`: its override, else the config's value."""
    values = {}
    for field in PER_MEMBER_FIELDS:
        given = config.member_overrides.get(field)
        if given is not None:
            values[field] = given[member]
        else:
            target = config
            for part in field.split('.'):
                target = target[part]
            values[field] = target
    return values


def hparams(config, train_labels: np.ndarray) -> dict[str, np.ndarray]:
    """The per-member values as arrays: (K,) (class weights (K, 2)) for a population, scalars for a solo
    run. 'auto' class weights are resolved from the training labels (losses.resolve_class_weights)."""
    members = []
    for i in range(size(config)):
        values = member_values(config, i)
        member = {
            'learning_rate': np.float32(values['learning_rate']),
            'l1': np.float32(values['l1']),
            'l2': np.float32(values['l2']),
            'class_weights': np.asarray(
                resolve_class_weights(values['class_weights'], train_labels), np.float32
            ),
        }
        for field, name in DROPOUT_FIELDS.items():
            if field in config.member_overrides:
                member[name] = np.float32(values[field])
        members.append(member)
    return stack(members) if is_population(config) else members[0]


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Member trees → one tree with a leading member axis (numpy)."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def take(tree: PyTree, member: int) -> PyTree:
    """Member `member` of a tree with a leading member axis."""
    return jax.tree.map(lambda x: x[member], tree)


def describe(config, member: int) -> dict[str, Any]:
    """What sets member `member` apart: its init seed and its overrides (summary.json)."""
    overrides = {field: config.member_overrides[field][member] for field in config.member_overrides}
    return {'member': member, 'init_seed': init_seeds(config)[member], **overrides}
