"""visualize.py: the gate replay reproduces each ConvLSTM layer, figures are written, bad input is refused."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from test_evaluate import _smoke_config, _tiny_split

from convlstm_jax import plotting, visualize


def _tiny_model(filters: tuple[int, ...]):
    import jax

    from convlstm_jax import models

    config = _smoke_config()
    config.model.filters = filters
    model = models.build_model(config.model)
    shape = (config.data.time_steps, config.data.height, config.data.width, config.data.frames_per_step)
    clip = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    variables = jax.jit(lambda key, x: model.init(key, x, train=False))(jax.random.PRNGKey(0), clip[None])
    return config, model, variables, clip


def test_replay_reproduces_every_layer_and_the_logit() -> None:
    import jax

    filters = (2, 3)  # a layer returning sequences, and a last one returning its final state
    _, model, variables, clip = _tiny_model(filters)
    logit, activations = visualize.layer_activations(model, variables, clip)  # checks each layer's output
    expected = jax.jit(lambda v, x: model.apply(v, x[None], train=False)[0])(variables, clip)
    assert logit == pytest.approx(float(expected), abs=1e-5)
    assert [a.name for a in activations] == [f'convlstm_{i}' for i in range(len(filters))]
    for layer, width in zip(activations, filters, strict=True):
        assert layer.states['h'].shape[0] == clip.shape[0] and layer.states['h'].shape[-1] == width
        for gate in ('i', 'f', 'o'):
            assert 0 <= layer.states[gate].min() and layer.states[gate].max() <= 1


@pytest.mark.slow
def test_clip_figure_is_drawn(tmp_path: pathlib.Path) -> None:
    _, model, variables, clip = _tiny_model((2,))
    _, activations = visualize.layer_activations(model, variables, clip)
    gradient = visualize.saliency(model, variables, clip)
    assert gradient.shape == clip.shape and np.abs(gradient).max() > 0
    figure = visualize.clip_figure(clip, activations, gradient, channels=(1,), title='tiny')
    path = plotting.save_figure(figure, tmp_path / 'clip.png')
    assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match='cannot show'):
        visualize.clip_figure(clip, activations, gradient, channels=(7,))


def test_shown_steps_spread_evenly() -> None:
    assert visualize.shown_steps(30, 10)[0] == 0 and visualize.shown_steps(30, 10)[-1] == 29
    assert len(visualize.shown_steps(30, 10)) == 10
    assert visualize.shown_steps(4, 10) == [0, 1, 2, 3]


@pytest.mark.slow
def test_cli_draws_a_clip_and_refuses_bad_frames(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import jax

    from convlstm_jax import checkpoints
    from convlstm_jax.data import dataset

    config, _, variables, _ = _tiny_model((2,))
    spec = {'model': checkpoints.model_fields(config.model), 'input': checkpoints.input_contract(config.data)}
    model_dir = checkpoints.save_model_dir(
        tmp_path / 'model', spec, jax.tree.map(np.asarray, dict(variables))
    )
    splits = {'test': _tiny_split('test', config.data, 60, 3)}
    monkeypatch.setattr(dataset, 'load_splits', lambda data_config: splits, raising=False)
    t = int(splits['test'].samples[5])
    out = tmp_path / 'clip.png'
    argv = ['--checkpoint', str(model_dir), '--split', 'test', '--out', str(out), '--channels', '0']
    assert visualize.main([*argv, '--t', str(t)]) == 0
    assert out.stat().st_size > 5000
    out.unlink()
    assert visualize.main([*argv[:-2], '--t', str(t)]) == 0  # every channel (no --channels)
    assert out.stat().st_size > 5000
    assert visualize.main([*argv, '--t', '0']) == 2
    assert 'not a valid sample' in capsys.readouterr().err
    assert visualize.main([*argv, '--t', str(t), '--split', 'val']) == 2
    assert "unknown split 'val'" in capsys.readouterr().err
