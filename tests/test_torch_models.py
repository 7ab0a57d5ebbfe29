"""The PyTorch twin of the 2021 models gives this project's outputs on copied weights (needs torch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convlstm_jax import benchmark, models

torch = pytest.importorskip('torch', reason='torch is not installed (the optional `peers` extra)')
torch_models = pytest.importorskip('convlstm_jax.benchmark.torch_models')

SHAPE = (2, 3, 10, 12, 4)  # (B, T, H, W, C): the 2-layer model's second ConvLSTM still sees 3×4 pixels


def _variables(model, clips, seed=0):
    """Initialized variables with random moving statistics, so that inference really uses them."""
    variables = jax.jit(model.init)(jax.random.key(seed), clips)  # one compile, not op by op
    rng = np.random.default_rng(seed + 7)
    stats = {
        name: {
            'mean': rng.normal(0, 0.1, value['mean'].shape).astype(np.float32),
            'var': rng.uniform(0.01, 0.2, value['var'].shape).astype(np.float32),
        }
        for name, value in variables['batch_stats'].items()
    }
    return {'params': variables['params'], 'batch_stats': stats}


@pytest.mark.parametrize('name', ['one_layer', 'two_layer'])
def test_torch_twin_matches_this_project_in_inference(name):
    model_config = benchmark.load_config(name).model
    clips = np.random.default_rng(1).integers(0, 256, SHAPE, dtype=np.uint8)
    model = models.build_model(model_config)
    variables = _variables(model, jnp.asarray(clips))
    want = np.asarray(model.apply(variables, jnp.asarray(clips), train=False))

    twin = torch_models.Classifier(model_config, channels=SHAPE[-1]).eval()
    torch_models.load_flax_variables(twin, variables)
    with torch.no_grad():
        got = twin(torch.from_numpy(clips)).numpy()
    assert got.shape == (SHAPE[0],)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_torch_twin_has_the_parameter_count_of_this_project():
    for name, parameters in (('one_layer', 11_537), ('two_layer', 66_849)):
        twin = torch_models.Classifier(benchmark.load_config(name).model, channels=4)
        assert sum(p.numel() for p in twin.parameters()) == parameters


def test_hard_sigmoid_is_this_projects():
    from convlstm_jax import layers

    x = np.linspace(-4, 4, 81, dtype=np.float32)
    np.testing.assert_allclose(
        torch_models.hard_sigmoid(torch.from_numpy(x)).numpy(), np.asarray(layers.hard_sigmoid(x)), atol=1e-7
    )


def test_bias_is_refused_with_a_clear_error():
    model_config = benchmark.load_config('one_layer').model
    model_config.use_bias = True
    with pytest.raises(ValueError, match='expected use_bias False'):
        torch_models.Classifier(model_config, channels=4)
