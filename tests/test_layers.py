"""ConvLSTM2D: activations, initializers, Keras parity (tf_keras and Keras 3), the reference recurrence,
the convolutions' custom VJP, the cell, bad input."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fast_lane
from reference_convlstm import ReferenceConvLSTM2D

from convlstm_jax import conv, layers
from convlstm_jax.benchmark import keras_models
from convlstm_jax.layers import ConvLSTM2D
from convlstm_jax.tf_cpu import import_tensorflow

OUTPUT_ATOL = 1e-5
GRAD_RTOL = 1e-4
# bf16 convolutions (fp32 state and accumulation) against fp32, on inputs in [0, 1] and O(1) weights.
BF16_ATOL = 3e-2

# What every parity case runs: the layer (with and without remat) and the plain nn.scan reference of
# tests/reference_convlstm.py; the first case also runs the remaining options.
IMPLEMENTATIONS = (
    (ConvLSTM2D, {}),
    (ConvLSTM2D, {'remat': True}),
    (ReferenceConvLSTM2D, {}),
)
MORE_IMPLEMENTATIONS = (
    (ConvLSTM2D, {'remat': True, 'unroll': 3}),
    (ReferenceConvLSTM2D, {'remat': True, 'unroll': 2}),
)
# The layer against the reference: float32 rounding only.
REFERENCE_RTOL = 1e-5
BF16_REFERENCE_RTOL = 1e-2  # about one bfloat16 ulp (2^-7)


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def _random_params(module, x, seed=1):
    """Initialized params with the bias made random too, so that bias handling is actually checked."""
    params = module.init(jax.random.key(seed), x)['params']
    if 'bias' in params:
        params = {**params, 'bias': jax.random.normal(jax.random.key(seed + 1), params['bias'].shape) * 0.5}
    return params


def _flax_output_and_grads(module, params, x, cotangent):
    def loss(p, inputs):
        out = module.apply({'params': p}, inputs)
        return jnp.sum(out * cotangent), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return np.asarray(out), grads


def _keras_output_and_grads(keras_model, x, cotangent):
    tf = import_tensorflow()
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = keras_model(inputs)
        loss = tf.reduce_sum(out * cotangent)
    layer = keras_model.layers[-1]
    names = [w.name.split('/')[-1].split(':')[0] for w in layer.weights]
    grads = tape.gradient(loss, [inputs, *layer.weights])
    return out.numpy(), grads[0].numpy(), {n: g.numpy() for n, g in zip(names, grads[1:], strict=True)}


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-12))


# ----------------------------------------------------------------------------------------- activations


def test_hard_sigmoid_is_keras2_with_tf_gradient():
    keras = keras_models.tf_keras()
    tf = import_tensorflow()
    x = np.array([-3.0, -2.5, -1.0, 0.0, 0.7, 2.5, 3.0], np.float32)
    np.testing.assert_allclose(
        layers.hard_sigmoid(x), keras.activations.hard_sigmoid(tf.constant(x)).numpy(), atol=1e-7
    )
    grad = jax.vmap(jax.grad(layers.hard_sigmoid))(jnp.asarray(x))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = keras.activations.hard_sigmoid(xt)
    np.testing.assert_allclose(grad, tape.gradient(y, xt).numpy(), atol=1e-7)
    np.testing.assert_allclose(grad, [0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0], atol=1e-7)


def test_keras3_hard_sigmoid_formula():
    x = jnp.linspace(-4.0, 4.0, 17)
    np.testing.assert_allclose(layers.hard_sigmoid_keras3(x), np.clip(x + 3.0, 0.0, 6.0) / 6.0, atol=1e-7)


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match='hard_sigmoid_keras3.*linear|linear.*tanh'):
        layers.get_activation('swishy')
    with pytest.raises(ValueError, match='unknown activation'):
        ConvLSTM2D(2, recurrent_activation='nope').init(jax.random.key(0), jnp.zeros((1, 2, 5, 5, 1)))


# ---------------------------------------------------------------------------------------- initializers


def test_keras_initializers():
    x = jnp.zeros((1, 2, 6, 6, 3))
    params = ConvLSTM2D(4, kernel_size=3).init(jax.random.key(0), x)['params']
    assert params['kernel'].shape == (3, 3, 3, 16) and params['recurrent_kernel'].shape == (3, 3, 4, 16)
    limit = np.sqrt(6.0 / (9 * 3 + 9 * 16))  # Keras fans: kh·kw·in and kh·kw·out
    assert np.all(np.abs(params['kernel']) <= limit) and np.max(np.abs(params['kernel'])) > 0.8 * limit
    flat = np.asarray(params['recurrent_kernel']).reshape(36, 16)
    np.testing.assert_allclose(flat.T @ flat, np.eye(16), atol=1e-5)
    np.testing.assert_array_equal(params['bias'], np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    no_forget = ConvLSTM2D(4, unit_forget_bias=False).init(jax.random.key(0), x)['params']
    np.testing.assert_array_equal(no_forget['bias'], np.zeros(16))


# ---------------------------------------------------------------------------------------- tf_keras parity


PARITY_CASES = {
    'valid-last': dict(shape=(2, 4, 7, 8, 3), kw=dict(filters=3)),
    'same-sequences-nobias': dict(
        shape=(2, 3, 6, 5, 2), kw=dict(filters=2, padding='same', return_sequences=True, use_bias=False)
    ),
    'strides2-odd': dict(shape=(1, 3, 9, 7, 2), kw=dict(filters=3, padding='same', strides=(2, 2))),
    'valid-dilation-kernel5x3': dict(
        shape=(2, 3, 11, 9, 1),
        kw=dict(filters=2, kernel_size=(5, 3), dilation_rate=(1, 2), return_sequences=True),
    ),
    'sigmoid-relu': dict(
        shape=(1, 3, 6, 6, 2), kw=dict(filters=2, activation='relu', recurrent_activation='sigmoid')
    ),
    'linear-tanh': dict(
        shape=(1, 3, 6, 6, 2), kw=dict(filters=2, activation='linear', recurrent_activation='tanh')
    ),
    'go-backwards': dict(shape=(1, 4, 6, 6, 2), kw=dict(filters=2, go_backwards=True, return_sequences=True)),
    # Even kernels pad 'same' asymmetrically: the transposed convolutions of the backward pass must mirror it.
    'same-even-kernel4x2': dict(
        shape=(2, 3, 7, 6, 2), kw=dict(filters=2, kernel_size=(4, 2), padding='same', return_sequences=True)
    ),
    'valid-even-kernel2x3': dict(shape=(1, 3, 6, 7, 3), kw=dict(filters=2, kernel_size=(2, 3))),
}


@pytest.mark.parametrize('case', fast_lane(sorted(PARITY_CASES), {'same-sequences-nobias'}))
def test_layer_matches_tf_keras(case):
    shape, kw = PARITY_CASES[case]['shape'], PARITY_CASES[case]['kw']
    x = _inputs(shape)
    reference = ConvLSTM2D(**kw)
    params = _random_params(reference, x)
    keras_model = keras_models.keras_convlstm(shape[1:], **kw)
    keras_models.set_convlstm_weights(keras_model.layers[-1], params)
    cotangent = np.random.default_rng(2).normal(size=keras_model.output_shape[1:]).astype(np.float32)
    want_out, want_dx, want_dw = _keras_output_and_grads(keras_model, x, cotangent)

    for layer, options in IMPLEMENTATIONS + (MORE_IMPLEMENTATIONS if case == 'valid-last' else ()):
        impl = (layer.__name__, options)
        out, (d_params, dx) = _flax_output_and_grads(layer(**kw, **options), params, x, cotangent)
        assert out.shape == want_out.shape, impl
        np.testing.assert_allclose(out, want_out, atol=OUTPUT_ATOL, rtol=0, err_msg=str(impl))
        assert _rel_err(dx, want_dx) <= GRAD_RTOL, (impl, 'inputs', _rel_err(dx, want_dx))
        assert set(d_params) == set(want_dw), (set(d_params), set(want_dw))
        for name, grad in d_params.items():
            assert _rel_err(grad, want_dw[name]) <= GRAD_RTOL, (impl, name, _rel_err(grad, want_dw[name]))


@pytest.mark.slow
def test_return_state_and_initial_state_match_tf_keras():
    keras = keras_models.tf_keras()
    shape, filters = (2, 3, 6, 7, 2), 3
    x = _inputs(shape)
    rng = np.random.default_rng(3)
    h0, c0 = (rng.normal(size=(2, 4, 5, filters)).astype(np.float32) for _ in range(2))
    module = ConvLSTM2D(filters, return_state=True)
    params = _random_params(module, x)

    inputs, h_in, c_in = keras.Input(shape[1:]), keras.Input((4, 5, filters)), keras.Input((4, 5, filters))
    layer = keras.layers.ConvLSTM2D(filters, 3, return_state=True)
    keras_model = keras.Model([inputs, h_in, c_in], layer(inputs, initial_state=[h_in, c_in]))
    keras_models.set_convlstm_weights(layer, params)
    want = [w.numpy() for w in keras_model([x, h0, c0])]

    for layer, impl in IMPLEMENTATIONS:
        got = layer(filters, return_state=True, **impl).apply({'params': params}, x, (h0, c0))
        assert len(got) == 3
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=OUTPUT_ATOL, rtol=0, err_msg=str(impl))

        def loss(p, h, c, layer=layer, impl=impl):
            out, h_t, c_t = layer(filters, return_state=True, **impl).apply({'params': p}, x, (h, c))
            return jnp.sum(out) + jnp.sum(jnp.sin(c_t))

        grads = jax.grad(loss, argnums=(0, 1, 2))(params, h0, c0)
        if (layer, impl) == IMPLEMENTATIONS[0]:
            reference_grads = grads
        else:
            for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads), strict=True):
                assert _rel_err(a, b) <= GRAD_RTOL


# ---------------------------------------------------------------------------------------- Keras 3 parity


_KERAS3_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ['KERAS_BACKEND'] = 'tensorflow'
    from convlstm_jax.tf_cpu import import_tensorflow
    import_tensorflow()
    import keras
    import numpy as np
    data = np.load(sys.argv[1])
    outputs = {}
    for activation in json.loads(sys.argv[2]):
        layer = keras.layers.ConvLSTM2D(
            3, 3, padding='same', return_sequences=True, recurrent_activation=activation
        )
        layer(data['x'])
        layer.set_weights([data['kernel'], data['recurrent_kernel'], data['bias']])
        outputs[activation] = keras.ops.convert_to_numpy(layer(data['x']))
    np.savez(sys.argv[3], **outputs)
    """
)
KERAS3_ACTIVATIONS = {'hard_sigmoid': 'hard_sigmoid_keras3', 'sigmoid': 'sigmoid'}


@pytest.mark.slow
def test_layer_matches_keras3(tmp_path):
    """Keras 3 (TensorFlow backend) runs in a subprocess: KERAS_BACKEND must be set before importing keras."""
    x = _inputs((2, 3, 6, 7, 2))
    kw = dict(filters=3, kernel_size=3, padding='same', return_sequences=True)
    params = _random_params(ConvLSTM2D(**kw), x)
    np.savez(tmp_path / 'in.npz', x=x, **{k: np.asarray(v) for k, v in params.items()})
    env = {**os.environ, 'KERAS_BACKEND': 'tensorflow'}
    subprocess.run(
        [
            sys.executable,
            '-c',
            _KERAS3_SCRIPT,
            str(tmp_path / 'in.npz'),
            json.dumps(list(KERAS3_ACTIVATIONS)),
            str(tmp_path / 'out.npz'),
        ],
        check=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=300,
    )
    want = np.load(tmp_path / 'out.npz')
    for keras3_name, ours in KERAS3_ACTIVATIONS.items():
        for layer, impl in IMPLEMENTATIONS:
            got = layer(**kw, recurrent_activation=ours, **impl).apply({'params': params}, x)
            np.testing.assert_allclose(
                got, want[keras3_name], atol=OUTPUT_ATOL, rtol=0, err_msg=f'{ours} {impl}'
            )


# --------------------------------------------------------------------------- dropout, bf16, speed path


@pytest.mark.slow
def test_dropout_masks_are_per_sequence_and_reproducible():
    x = _inputs((2, 4, 6, 6, 2))
    module = ConvLSTM2D(3, dropout=0.4, recurrent_dropout=0.3, return_sequences=True)
    params = _random_params(module, x)
    clean = module.apply({'params': params}, x)

    def noisy(seed, layer=ConvLSTM2D):
        run = layer(3, dropout=0.4, recurrent_dropout=0.3, return_sequences=True)
        return run.apply({'params': params}, x, deterministic=False, rngs={'dropout': jax.random.key(seed)})

    np.testing.assert_array_equal(noisy(0), noisy(0))
    np.testing.assert_allclose(noisy(0), noisy(0, ReferenceConvLSTM2D), atol=OUTPUT_ATOL)
    assert not np.allclose(noisy(0), clean) and not np.allclose(noisy(0), noisy(1))

    # Input dropout alone: each gate's kernel sees its own masked copy of the input, as in the reference.
    only_input = ConvLSTM2D(3, dropout=0.4, return_sequences=True)
    a = only_input.apply({'params': params}, x, deterministic=False, rngs={'dropout': jax.random.key(5)})
    b = ReferenceConvLSTM2D(3, dropout=0.4, return_sequences=True).apply(
        {'params': params}, x, deterministic=False, rngs={'dropout': jax.random.key(5)}
    )
    np.testing.assert_allclose(a, b, atol=OUTPUT_ATOL)


@pytest.mark.slow
def test_bfloat16_compute_is_close_to_float32():
    x = _inputs((2, 4, 8, 9, 3))
    params = _random_params(ConvLSTM2D(4), x)
    full = ConvLSTM2D(4, return_sequences=True).apply({'params': params}, x)
    for layer, impl in IMPLEMENTATIONS[:3]:
        half = layer(4, return_sequences=True, compute_dtype=jnp.bfloat16, **impl).apply(
            {'params': params}, x
        )
        assert half.dtype == jnp.float32
        assert float(jnp.max(jnp.abs(half - full))) <= BF16_ATOL, impl

    def loss(p, dtype):
        return jnp.sum(ConvLSTM2D(4, compute_dtype=dtype).apply({'params': p}, x) ** 2)

    g32, g16 = jax.grad(loss)(params, jnp.float32), jax.grad(loss)(params, jnp.bfloat16)
    for name in g32:
        assert _rel_err(g16[name], g32[name]) <= 5e-2, name


# ------------------------------------------------------------------- the reference and the custom VJP


REFERENCE_CASES = {
    'valid': dict(filters=3),
    'remat-unroll2': dict(filters=3, remat=True, unroll=2),
    'same-even-nobias-sequences': dict(
        filters=2, kernel_size=(4, 2), padding='same', use_bias=False, return_sequences=True
    ),
    'strides2-same': dict(filters=2, padding='same', strides=2, return_sequences=True),
    'dilated-valid-backwards': dict(filters=2, kernel_size=(3, 2), dilation_rate=(2, 1), go_backwards=True),
    'dropout-both': dict(filters=3, dropout=0.3, recurrent_dropout=0.2, return_sequences=True),
    # bf16: the two backward passes round dz to bfloat16 at different points.
    'input-dropout-remat-bf16': dict(filters=2, dropout=0.3, remat=True, compute_dtype=jnp.bfloat16),
    'recurrent-dropout-state': dict(filters=2, recurrent_dropout=0.4, padding='same', return_state=True),
}


@pytest.mark.parametrize('case', fast_lane(sorted(REFERENCE_CASES), {'valid'}))
def test_layer_matches_reference_values_and_gradients(case):
    """The product (nn.scan over ConvLSTMCell, the conv pair's custom VJP) against the plain nn.scan over lax
    convolutions that JAX differentiates: outputs and the gradients of params, input and initial state."""
    kw = REFERENCE_CASES[case]
    x = jnp.asarray(_inputs((2, 4, 7, 8, 3)))
    params = _random_params(ConvLSTM2D(**kw), x)
    state = None
    if kw.get('return_state'):
        rng = np.random.default_rng(4)
        state = tuple(jnp.asarray(rng.normal(size=(2, 7, 8, kw['filters'])), jnp.float32) for _ in range(2))
    rngs = {'dropout': jax.random.key(9)}

    def run(layer, p, x, state):
        out = layer(**kw).apply({'params': p}, x, state, deterministic=False, rngs=rngs)
        leaves = jax.tree.leaves(out)
        weights = [jnp.sin(jnp.arange(v.size, dtype=jnp.float32)).reshape(v.shape) for v in leaves]
        return sum(jnp.sum(v * w) for v, w in zip(leaves, weights, strict=True)), out

    argnums = (0, 1, 2) if state is not None else (0, 1)
    results = [
        jax.value_and_grad(run, argnums=argnums, has_aux=True)(params, x, state)
        for run in (functools.partial(run, ConvLSTM2D), functools.partial(run, ReferenceConvLSTM2D))
    ]
    ((_, got), got_grads), ((_, want), want_grads) = results
    rtol = REFERENCE_RTOL if kw.get('compute_dtype') is None else BF16_REFERENCE_RTOL
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert _rel_err(g, w) <= rtol, (case, 'output', _rel_err(g, w))
    names = jax.tree_util.tree_flatten_with_path(want_grads)[0]
    for (path, w), g in zip(names, jax.tree.leaves(got_grads), strict=True):
        assert _rel_err(g, w) <= rtol, (case, jax.tree_util.keystr(path), _rel_err(g, w))


GEOMETRIES = {
    'valid': conv.ConvSpec(padding='valid'),
    'same-even': conv.ConvSpec(padding='same'),
    'strided': conv.ConvSpec(strides=(2, 1), padding='same'),
    'dilated': conv.ConvSpec(padding='valid', dilation=(1, 2)),
}


@pytest.mark.parametrize('geometry', fast_lane(sorted(GEOMETRIES), {'valid'}))
@pytest.mark.parametrize('per_gate', fast_lane([False, True], {False}))
def test_gate_convolutions_vjp_is_the_convolutions_derivative(geometry, per_gate):
    """conv.gate_convolutions (flipped-kernel transposes, patch products) against JAX's derivative of the
    same lax convolutions, with one shared input and with one input per gate (dropout)."""
    spec = GEOMETRIES[geometry]
    keys = jax.random.split(jax.random.key(0), 5)
    kernel_hw = (4, 3) if geometry == 'same-even' else (3, 3)
    x = jax.random.uniform(keys[0], ((4,) if per_gate else ()) + (2, 9, 8, 3))
    kernel = jax.random.normal(keys[1], (*kernel_hw, 3, 8))
    recurrent_kernel = jax.random.normal(keys[2], (*kernel_hw, 2, 8))
    out_hw = spec.output_hw(9, 8, kernel_hw)
    h = jax.random.normal(keys[3], ((4,) if per_gate else ()) + (2, *out_hw, 2))

    def plain(x, h, kernel, recurrent_kernel):
        def lax_conv(v, k, strides=(1, 1), padding='SAME', dilation=(1, 1)):
            dims = ('NHWC', 'HWIO', 'NHWC')
            return jax.lax.conv_general_dilated(
                v, k, strides, padding, rhs_dilation=dilation, dimension_numbers=dims
            )

        geometry = dict(strides=spec.strides, padding=spec.padding.upper(), dilation=spec.dilation)
        if not per_gate:
            return lax_conv(x, kernel, **geometry) + lax_conv(h, recurrent_kernel)
        kernels, recurrent_kernels = jnp.split(kernel, 4, -1), jnp.split(recurrent_kernel, 4, -1)
        gates = [
            lax_conv(x[g], kernels[g], **geometry) + lax_conv(h[g], recurrent_kernels[g]) for g in range(4)
        ]
        return jnp.concatenate(gates, -1)

    args = (x, h, kernel, recurrent_kernel)
    got, got_vjp = jax.vjp(functools.partial(conv.gate_convolutions, spec), *args)
    want, want_vjp = jax.vjp(plain, *args)
    assert _rel_err(got, want) <= 1e-6
    dz = jax.random.normal(keys[4], want.shape)
    for name, g, w in zip(('x', 'h', 'kernel', 'recurrent_kernel'), got_vjp(dz), want_vjp(dz), strict=True):
        assert g.shape == w.shape and _rel_err(g, w) <= 1e-5, (name, _rel_err(g, w))


@pytest.mark.slow
def test_gate_convolutions_bfloat16_cotangents_keep_their_primals_dtypes():
    spec = conv.ConvSpec(padding='same', dtype=jnp.bfloat16)
    x, h = jnp.ones((1, 5, 5, 2), jnp.bfloat16), jnp.ones((1, 5, 5, 3), jnp.bfloat16)
    kernel, recurrent_kernel = jnp.ones((3, 3, 2, 12)), jnp.ones((3, 3, 3, 12))
    z, vjp = jax.vjp(functools.partial(conv.gate_convolutions, spec), x, h, kernel, recurrent_kernel)
    assert z.dtype == jnp.float32
    grads = vjp(jnp.ones_like(z))
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.float32]


def test_layer_is_one_custom_vjp_inside_one_scan():
    """The time loop is one scan whose step holds the one custom VJP (the convolution pair): no other."""
    x = jnp.zeros((1, 3, 6, 6, 2))
    module = ConvLSTM2D(2, dropout=0.2, recurrent_dropout=0.2)
    params = module.init(jax.random.key(0), x)['params']
    for deterministic in (True, False):
        jaxpr = str(
            jax.make_jaxpr(
                lambda p, deterministic=deterministic: module.apply(
                    {'params': p}, x, deterministic=deterministic, rngs={'dropout': jax.random.key(1)}
                )
            )(params)
        )
        assert jaxpr.count('custom_vjp_call') == 1 and jaxpr.count('scan[') == 1, jaxpr


def test_cell_reproduces_the_layer_and_returns_gates():
    """What visualize runs: ConvLSTMCell.of(layer, keep_gates=True), scanned by hand, gives the layer's h."""
    x = jnp.asarray(_inputs((1, 4, 7, 6, 2)))
    layer = ConvLSTM2D(3, padding='same', go_backwards=True, return_sequences=True)
    params = _random_params(layer, x)
    cell = layers.ConvLSTMCell.of(layer, keep_gates=True)
    frames = jnp.swapaxes(x, 0, 1)[::-1]
    carry = cell.initialize_carry(frames.shape[1:], (3, 3), 3)

    def step(carry, x_t):
        return cell.apply({}, carry, x_t, params['kernel'], params['recurrent_kernel'], params['bias'])

    _, (i, f, candidate, o, c, h) = jax.lax.scan(step, carry, frames)
    np.testing.assert_allclose(h, jnp.swapaxes(layer.apply({'params': params}, x), 0, 1), atol=1e-6)
    np.testing.assert_allclose(c[1:], f[1:] * c[:-1] + i[1:] * candidate[1:], atol=1e-6)
    assert float(jnp.min(o)) >= 0.0 and float(jnp.max(o)) <= 1.0


def test_patches_match_xla_convolution():
    x = jnp.asarray(_inputs((2, 9, 8, 3)))
    kernel = jax.random.normal(jax.random.key(0), (3, 2, 3, 5))
    for strides, padding, dilation in [
        ((1, 1), 'same', (1, 1)),
        ((2, 3), 'same', (1, 1)),
        ((2, 1), 'valid', (2, 2)),
    ]:
        spec = conv.ConvSpec(strides, padding, dilation)
        cols = conv.patches(x, (3, 2), strides, padding, dilation)
        want = jax.lax.conv_general_dilated(
            x,
            kernel,
            strides,
            padding.upper(),
            rhs_dilation=dilation,
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        )
        np.testing.assert_allclose(cols @ kernel.reshape(-1, 5), want, atol=1e-5)
        np.testing.assert_allclose(spec.input_conv(x, kernel), want, atol=1e-5)


# ------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_clear_errors():
    module = ConvLSTM2D(2)
    x = jnp.zeros((1, 2, 5, 5, 3))
    variables = module.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match='rank 5'):
        module.apply(variables, jnp.zeros((2, 5, 5, 3)))
    with pytest.raises(ValueError, match='3 input channels'):
        module.apply(variables, jnp.zeros((1, 2, 5, 5, 4)))
    with pytest.raises(ValueError, match='floating-point'):
        module.apply(variables, jnp.zeros((1, 2, 5, 5, 3), jnp.int32))
    with pytest.raises(ValueError, match='padding'):
        ConvLSTM2D(2, padding='full').init(jax.random.key(0), x)
    with pytest.raises(ValueError, match='initial state h'):
        module.apply(variables, x, (jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 3, 3, 2))))
    with pytest.raises(ValueError, match='smaller than'):
        module.init(jax.random.key(0), jnp.zeros((1, 2, 2, 2, 3)))
