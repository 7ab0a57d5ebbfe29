"""Keras import: the 2021 checkpoints against TensorFlow, round trips through each Keras format, bad files."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import fast_lane
from PIL import Image

from convlstm_jax import checkpoints, inference, predict
from convlstm_jax import config as config_lib
from convlstm_jax.keras_io import architecture, convert, read
from convlstm_jax.keras_io import cli as keras_io_cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINTS_2021 = {
    'upbeat-snowflake-91': 'checkpoint_tc-augm-best-validation-retarget-upbeat-snowflake-91',
    'visionary-serenity': 'checkpoint_tc-augm-best-validation-retarget-no-regr-visionary-serenity',
}
TINY_INPUT = (3, 10, 12, 2)  # (T, H, W, C) of the round-trip models
pytestmark = pytest.mark.filterwarnings('ignore:You are saving your model as an HDF5 file')


@pytest.fixture(scope='module')
def tf_keras():
    from convlstm_jax.tf_cpu import import_tensorflow

    import_tensorflow()
    return pytest.importorskip('tf_keras')


@pytest.fixture(scope='module')
def sample_clips(reference_dir) -> np.ndarray:
    """Two full-shape uint8 clips (2, 30, 120, 160, 4) from the 11 sample frames, resized as in 2021.

    The frame orders (back and forth; still, then moving) make both models answer 0.25–0.6, not saturated.
    """
    paths = sorted((reference_dir / 'sample_frames').glob('*.png'))
    frames = np.stack([np.asarray(Image.open(p).resize((160, 120), Image.NEAREST)) for p in paths])
    back_and_forth = np.concatenate([np.arange(11), np.arange(9, 0, -1)] * 6)[:120]
    still_then_moving = np.r_[np.zeros(110, int), np.arange(1, 11)]
    return np.stack([_time_channels(frames[order]) for order in (back_and_forth, still_then_moving)])


def _time_channels(frames: np.ndarray) -> np.ndarray:
    """120 frames (oldest first) -> (30, H, W, 4): 30 groups of 4 consecutive frames as channels."""
    return frames.reshape(30, 4, *frames.shape[1:]).transpose(0, 2, 3, 1)


def _keras_outputs(model, clips: np.ndarray, tf_keras) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, logits) of a Keras classifier; the logit is the Dense pre-activation, from a sub-model
    giving the pooled features and the Dense weights applied in float64."""
    x = clips.astype(np.float32) / 255 if clips.dtype == np.uint8 else clips
    both = tf_keras.Model(model.input, [model.layers[-2].output, model.output])
    features, probabilities = (output.numpy() for output in both(x, training=False))
    probabilities = probabilities.ravel()
    kernel, bias = (w.numpy().astype(np.float64) for w in model.layers[-1].weights)
    return probabilities, (features.astype(np.float64) @ kernel + bias).ravel()


@pytest.mark.parametrize('name', fast_lane(sorted(CHECKPOINTS_2021), {'upbeat-snowflake-91'}))
def test_2021_checkpoint_matches_tensorflow(name, reference_dir, sample_clips, tf_keras, tmp_path):
    src = reference_dir / CHECKPOINTS_2021[name]
    keras_probabilities, keras_logits = _keras_outputs(
        tf_keras.models.load_model(str(src), compile=False), sample_clips, tf_keras
    )
    assert np.all((keras_probabilities > 0.05) & (keras_probabilities < 0.95)), keras_probabilities

    model_dir, clips_path, out = tmp_path / 'model', tmp_path / 'clips.npy', tmp_path / 'probabilities.npy'
    assert keras_io_cli.main([str(src), '--out', str(model_dir)]) == 0
    np.save(clips_path, sample_clips)
    assert predict.main(['--checkpoint', str(model_dir), '--clips', str(clips_path), '--out', str(out)]) == 0
    probabilities = np.load(out)
    assert probabilities.shape == (2,) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, keras_probabilities, rtol=0, atol=1e-5)

    spec, model, variables = inference.load_predictor(model_dir)
    logits = inference.predict_logits(model, variables, [sample_clips], progress=False)
    np.testing.assert_allclose(logits, keras_logits, rtol=0, atol=1e-4)
    assert spec['input'] == {
        'height': 120,
        'width': 160,
        'time_steps': 30,
        'frames_per_step': 4,
        'pixel_scale': 1 / 255,
        'resize': 'nearest',
        'horizon': 45,
    }
    assert spec['model']['recurrent_activation'] == 'hard_sigmoid'  # Keras 2 formula
    assert spec['model']['filters'] == ([16] if name == 'upbeat-snowflake-91' else [16, 32])
    assert spec['model']['batchnorm_last'] == (name == 'upbeat-snowflake-91')


# ---------------------------------------------------------------------------------------------------------
# Round trips with tiny random models

_BUILD_MODEL = """
def build(K, filters, padding, use_bias, batchnorm_last, recurrent_activation, input_shape):
    L = K.layers
    inputs = K.Input(input_shape)
    x = inputs
    for i, f in enumerate(filters):
        last = i == len(filters) - 1
        x = L.ConvLSTM2D(f, 3, padding=padding, use_bias=use_bias, return_sequences=not last,
                         recurrent_activation=recurrent_activation, name=f'convLSTM_{i + 1}')(x)
        if not last:
            x = L.TimeDistributed(L.MaxPooling2D(2))(x)
            x = L.TimeDistributed(L.BatchNormalization(center=False, scale=False))(x)
    if batchnorm_last:
        x = L.BatchNormalization(center=False, scale=False, name='batchnorm_last')(x)
    x = L.GlobalMaxPooling2D()(x)
    model = K.Model(inputs, L.Dense(1, activation='sigmoid')(x))
    rng = np.random.default_rng(0)
    for w in model.weights:
        shape = tuple(w.shape)
        if 'variance' in w.name:
            w.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        else:
            w.assign((0.4 * rng.standard_normal(shape)).astype(np.float32))
    return model
"""


def _tiny_keras2(tf_keras, **kwargs):
    namespace = {'np': np}
    exec(_BUILD_MODEL, namespace)
    return namespace['build'](tf_keras, input_shape=TINY_INPUT, **kwargs)


def _tiny_clips(count: int = 3) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, *TINY_INPUT), dtype=np.uint8)


def _write_config(path: pathlib.Path, **model) -> pathlib.Path:
    """A config file for the tiny models: the base recipe at the tiny input size, with these model fields."""
    lines = [f'    c.model.{key} = {value!r}' for key, value in model.items()]
    path.write_text(
        textwrap.dedent(
            """\
            from convlstm_jax import config as base


            def get_config(arg=None):
                c = base.base_config()
                c.data.time_steps, c.data.height, c.data.width, c.data.frames_per_step = {input}
            """
        ).format(input=TINY_INPUT)
        + '\n'.join(lines)
        + '\n    return c\n'
    )
    return path


def _project_probabilities(model_dir: pathlib.Path, clips: np.ndarray) -> np.ndarray:
    _, model, variables = inference.load_predictor(model_dir)
    return inference.predict_clips(model, variables, [clips], progress=False)


def test_keras2_h5_round_trip(tf_keras, tmp_path):
    keras_model = _tiny_keras2(
        tf_keras,
        filters=(3, 4),
        padding='valid',
        use_bias=True,
        batchnorm_last=False,
        recurrent_activation='hard_sigmoid',
    )
    path = tmp_path / 'tiny.h5'
    keras_model.save(path)
    clips = _tiny_clips()
    expected = keras_model(clips.astype(np.float32) / 255, training=False).numpy().ravel()

    assert keras_io_cli.main([str(path), '--out', str(tmp_path / 'model')]) == 0
    spec, _ = checkpoints.load_model(tmp_path / 'model')
    assert spec['model']['filters'] == [3, 4] and spec['model']['use_bias']
    assert spec['model']['recurrent_activation'] == 'hard_sigmoid'
    assert spec['input']['time_steps'] == 3 and spec['input']['frames_per_step'] == 2
    assert spec['source']['keras_format'] == 'h5'
    np.testing.assert_allclose(_project_probabilities(tmp_path / 'model', clips), expected, atol=1e-6)


_KERAS3_SCRIPT = """
import os, sys
import numpy as np
import keras
{build}
model = build(keras, filters=(3,), padding='same', use_bias=True, batchnorm_last=True,
              recurrent_activation='hard_sigmoid', input_shape={input})
out = sys.argv[1]
model.save(os.path.join(out, 'tiny.keras'))
model.save_weights(os.path.join(out, 'tiny.weights.h5'))
clips = np.load(os.path.join(out, 'clips.npy'))
np.save(os.path.join(out, 'expected.npy'), np.asarray(model(clips.astype('float32') / 255)).ravel())
"""


@pytest.fixture(scope='module')
def keras3_files(tmp_path_factory) -> pathlib.Path:
    """A tiny Keras 3 model (TensorFlow backend, in its own process) as .keras and .weights.h5, with its
    outputs on `_tiny_clips()`."""
    pytest.importorskip('keras')
    out = tmp_path_factory.mktemp('keras3')
    np.save(out / 'clips.npy', _tiny_clips())
    script = _KERAS3_SCRIPT.format(build=_BUILD_MODEL, input=TINY_INPUT)
    env = {
        **os.environ,
        'KERAS_BACKEND': 'tensorflow',
        'CUDA_VISIBLE_DEVICES': '',
        'TF_CPP_MIN_LOG_LEVEL': '2',
    }
    result = subprocess.run(
        [sys.executable, '-c', script, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_keras3_archive_round_trip(keras3_files, tmp_path):
    assert keras_io_cli.main([str(keras3_files / 'tiny.keras'), '--out', str(tmp_path / 'model')]) == 0
    spec, _ = checkpoints.load_model(tmp_path / 'model')
    assert spec['model']['recurrent_activation'] == 'hard_sigmoid_keras3'
    assert spec['model']['padding'] == 'same' and spec['model']['batchnorm_last']
    assert spec['source']['keras_version'].startswith('3.')
    probabilities = _project_probabilities(tmp_path / 'model', np.load(keras3_files / 'clips.npy'))
    np.testing.assert_allclose(probabilities, np.load(keras3_files / 'expected.npy'), atol=1e-6)


def test_keras3_weights_need_and_use_config(keras3_files, tmp_path):
    weights = keras3_files / 'tiny.weights.h5'
    with pytest.raises(ValueError, match='weights only.*--config'):
        convert.import_keras(weights)
    config = _write_config(
        tmp_path / 'tiny_config.py', filters=(3,), padding='same', use_bias=True, batchnorm_last=True
    )
    args = [str(weights), '--out', str(tmp_path / 'model'), '--config', str(config)]
    assert keras_io_cli.main(args) == 0
    spec, _ = checkpoints.load_model(tmp_path / 'model')
    assert spec['model']['recurrent_activation'] == 'hard_sigmoid_keras3'  # the file is Keras 3
    probabilities = _project_probabilities(tmp_path / 'model', np.load(keras3_files / 'clips.npy'))
    np.testing.assert_allclose(probabilities, np.load(keras3_files / 'expected.npy'), atol=1e-6)


_IMPORT_WITHOUT_TENSORFLOW = """
import sys
from convlstm_jax.keras_io import cli
status = cli.main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))
sys.exit(f'status {status}, loaded {loaded[:5]}' if status or loaded else 0)
"""


@pytest.mark.slow
def test_h5_and_keras_files_import_without_tensorflow(tf_keras, keras3_files, tmp_path):
    """Only SavedModels need TensorFlow: a Keras 2 .h5 and a Keras 3 .keras import in a process that never
    loads tensorflow, tf_keras or keras."""
    keras_model = _tiny_keras2(
        tf_keras,
        filters=(3,),
        padding='valid',
        use_bias=True,
        batchnorm_last=True,
        recurrent_activation='hard_sigmoid',
    )
    keras_model.save(tmp_path / 'tiny.h5')
    for src in (tmp_path / 'tiny.h5', keras3_files / 'tiny.keras'):
        out = tmp_path / f'model_{src.suffix[1:]}'
        result = subprocess.run(
            [sys.executable, '-c', _IMPORT_WITHOUT_TENSORFLOW, str(src), '--out', str(out)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
        )
        assert result.returncode == 0, (src, result.stderr[-2000:])
        assert (out / 'model.json').is_file()


# ---------------------------------------------------------------------------------------------------------
# Files that do not fit


def test_mismatched_weights_are_listed(tf_keras, tmp_path, capsys):
    """Weights of a 2-layer model with biases, against a 3-layer bias-free config."""
    keras_model = _tiny_keras2(
        tf_keras,
        filters=(3, 4),
        padding='valid',
        use_bias=True,
        batchnorm_last=False,
        recurrent_activation='hard_sigmoid',
    )
    weights = tmp_path / 'tiny_weights.h5'
    keras_model.save_weights(weights)
    config = _write_config(
        tmp_path / 'wrong.py', filters=(5, 4, 2), padding='same', use_bias=False, batchnorm_last=False
    )
    out = tmp_path / 'model'
    assert keras_io_cli.main([str(weights), '--out', str(out), '--config', str(config)]) == 2
    message = capsys.readouterr().err
    assert 'missing:' in message and 'params/convlstm_2/kernel' in message
    assert 'batch_stats/batchnorm_1/mean' in message
    assert 'unexpected:' in message and 'params/convlstm_0/bias' in message
    assert 'mis-shaped:' in message
    assert 'params/convlstm_0/kernel: expected (3, 3, 2, 20), found (3, 3, 2, 12)' in message
    assert not out.exists()


def test_architecture_differing_from_config_is_refused(tf_keras, tmp_path):
    keras_model = _tiny_keras2(
        tf_keras,
        filters=(3,),
        padding='valid',
        use_bias=False,
        batchnorm_last=True,
        recurrent_activation='hard_sigmoid',
    )
    path = tmp_path / 'tiny.h5'
    keras_model.save(path)
    config = config_lib.load_config_file(
        str(_write_config(tmp_path / 'c.py', filters=(4,), batchnorm_last=True))
    )
    with pytest.raises(ValueError, match=r'differs from --config:\n  filters: file \[3\], config \[4\]'):
        convert.import_keras(path, config)


def test_unsupported_architecture_is_refused(tf_keras, tmp_path):
    layers = tf_keras.layers
    inputs = tf_keras.Input(TINY_INPUT)
    x = layers.ConvLSTM2D(3, 3)(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    path = tmp_path / 'average.h5'
    tf_keras.Model(inputs, layers.Dense(1, activation='sigmoid')(x)).save(path)
    with pytest.raises(ValueError, match='unsupported architecture.*GlobalAveragePooling2D'):
        convert.import_keras(path)


def test_not_a_keras_file(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('hello')
    with pytest.raises(ValueError, match='not a SavedModel directory, a .keras archive or an HDF5 file'):
        read.read_keras(path)
    with pytest.raises(ValueError, match='not a SavedModel'):
        read.read_keras(tmp_path)


def test_activation_names_follow_the_keras_version():
    assert architecture.activation_name('hard_sigmoid', 2) == 'hard_sigmoid'
    assert architecture.activation_name('hard_sigmoid', 3) == 'hard_sigmoid_keras3'
    assert architecture.activation_name('tanh', 3) == 'tanh'
    with pytest.raises(ValueError, match="unsupported Keras activation 'selu'"):
        architecture.activation_name('selu', 2)
