"""The evaluate package: the 2021 table reproduced, thresholds chosen on another split, outputs, bad input."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from convlstm_jax import cli as cli_lib
from convlstm_jax import metrics
from convlstm_jax.data import labels as labels_lib
from convlstm_jax.evaluate import cli, core, reference
from convlstm_jax.evaluate import model as model_evaluation
from convlstm_jax.evaluate import report as report_lib

FAST = core.BootstrapOptions(block_length=240, num_resamples=20, seed=0)
PLOTS = ('roc.png', 'thresholds.png', 'timeline.png', 'histogram.png')


@pytest.fixture(scope='module')
def reference_run(
    reference_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, pathlib.Path]:
    out = tmp_path_factory.mktemp('reference_report')
    return report_lib.reference_report(reference_dir, out, FAST), out


def test_reference_reproduces_the_published_table(reference_run: tuple[dict, pathlib.Path]) -> None:
    report, _ = reference_run
    published = report['published_comparison']
    mismatches = {
        (name, figure): row
        for name, rows in published['matches'].items()
        for figure, row in rows.items()
        if not row['match']
    }
    assert not mismatches
    snowflake = published['predictors']['upbeat-snowflake-91']
    baseline = published['predictors'][core.BASELINE_2021]
    # The headline figures to 3 decimals (published values are truncated: ±0.002).
    assert snowflake['auc'] == pytest.approx(0.830, abs=0.002)
    assert baseline['auc'] == pytest.approx(0.838, abs=0.002)
    assert snowflake['youden']['tpr'] == pytest.approx(0.829, abs=0.002)
    assert snowflake['youden']['fpr'] == pytest.approx(0.310, abs=0.002)
    assert published['predictors']['visionary-serenity']['auc'] == pytest.approx(0.787, abs=0.001)
    assert published['frames']['first'] == 119 and published['frames']['last'] == 5355


def test_reference_correct_crop_and_checks(reference_run: tuple[dict, pathlib.Path]) -> None:
    report, _ = reference_run
    assert report['frames']['first'] == 119 and report['frames']['last'] == 5367 - 47
    assert report['checks']['test_labels_equal_recomputed']
    assert report['checks']['validation_labels_equal_recomputed']
    assert report['checks']['shipped_baseline_max_abs_difference_in_2021_crop'] < 1e-12
    assert report['checks']['unlabelled_frames_in_2021_crop'] == 35
    # The reference system's finding: "slow right now" alone beats the 2021 model.
    assert report['predictors']['-y_tilde[t-1]']['auc'] == pytest.approx(0.867, abs=0.002)
    assert report['predictors']['all-negative']['max_accuracy']['accuracy'] == pytest.approx(0.841, abs=0.001)


def test_reference_thresholds_never_come_from_the_scored_split(
    reference_run: tuple[dict, pathlib.Path], reference_dir: pathlib.Path
) -> None:
    report, _ = reference_run
    for name, result in report['predictors'].items():
        for rule in core.THRESHOLD_RULES:
            chosen_on = result[rule]['chosen_on']
            if result['kind'] == 'model':  # only the labelled 2021 case may use test
                assert chosen_on == reference.CHOSEN_ON_TEST_2021, name
            else:
                assert chosen_on == 'validation', name
    # The baseline's Youden threshold is the one validation gives.
    val_y_tilde = np.load(reference_dir / 'targets/validation/Y_tilde.npy')
    val_labels = np.load(reference_dir / 'targets/validation/Y_label.npy')
    frames = np.arange(119, len(val_y_tilde) - 47 + 1)
    expected = metrics.youden(val_labels[frames], labels_lib.baseline_probability(val_y_tilde)[frames])
    assert report['predictors'][core.BASELINE_2021]['youden']['threshold'] == expected['threshold']


def test_reference_outputs_are_written(reference_run: tuple[dict, pathlib.Path]) -> None:
    from PIL import Image

    _, out = reference_run
    for name in PLOTS:
        with Image.open(out / name) as image:
            pixels = np.asarray(image.convert('L'))
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200, name
        assert pixels.std() > 5, f'{name} looks blank'

    def reject(constant: str) -> None:
        raise ValueError(f'metrics.json holds {constant}')

    content = json.loads((out / 'metrics.json').read_text(), parse_constant=reject)
    for result in content['predictors'].values():
        assert {'auc', 'auc_ci', 'max_accuracy', 'youden'} <= set(result)
        for rule in core.THRESHOLD_RULES:
            assert {'threshold', 'tpr', 'fpr', 'accuracy', 'chosen_on'} <= set(result[rule])
    report = (out / 'report.md').read_text()
    assert 'only test predictions exist' in report
    assert all(f'({name})' in report for name in PLOTS)
    assert not list(out.glob('.*tmp')), 'temporary files left behind'


def _scored(labels: np.ndarray, split: str) -> core.ScoredFrames:
    return core.ScoredFrames(split, np.arange(len(labels)), labels, np.zeros(len(labels)))


def test_thresholds_come_from_the_selection_split() -> None:
    # On the scored split the best threshold would be 0.55; the selection split says 0.25.
    test_labels = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    test_scores = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6])
    val_labels = np.array([0, 0, 1, 1])
    val_scores = np.array([0.1, 0.2, 0.25, 0.3])
    predictor = core.Predictor('m', test_scores, val_scores, kind='model')
    results = core.score_predictors(
        _scored(test_labels, 'test'), [predictor], _scored(val_labels, 'validation'), FAST
    )
    assert results['m']['youden']['threshold'] == 0.25
    assert results['m']['youden']['chosen_on'] == 'validation'
    assert results['m']['youden']['tpr'] == 1.0 and results['m']['youden']['fpr'] == 0.5


def test_published_matches_reads_printed_precision() -> None:
    assert reference.published_matches(0.8297, '0.829')  # truncated
    assert reference.published_matches(0.2887, '0.289')  # rounded
    assert reference.published_matches(0.9880, '0.98')  # truncated, 2 decimals
    assert not reference.published_matches(0.8250, '0.829')


def test_cli_reference_mode(reference_dir: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    code = cli.main(['--reference', str(reference_dir), '--out', str(tmp_path), '--num_resamples', '5'])
    assert code == 0
    assert (tmp_path / 'report.md').is_file()
    assert 'upbeat-snowflake-91' in capsys.readouterr().out


def test_cli_missing_reference_is_a_clear_error(tmp_path: pathlib.Path, capsys) -> None:
    code = cli.main(['--reference', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out')])
    assert code == 2
    assert 'Y_tilde.npy' in capsys.readouterr().err


@pytest.mark.parametrize('option', ['--window', '--num_resamples', '--block_length', '--batch_size'])
def test_cli_refuses_counts_below_one(option: str, tmp_path: pathlib.Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['--reference', str(tmp_path), '--out', str(tmp_path / 'out'), option, '0'])
    assert exit_info.value.code == f'error: {option} must be at least 1, found 0'  # exit status 1
    assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------------------------
# Model mode, on a tiny random model and tiny random splits


def _smoke_config():
    from convlstm_jax.config import apply_variant, base_config

    return apply_variant(base_config(), 'smoke')


def _tiny_split(name: str, data_config, num_frames: int, seed: int):
    from convlstm_jax.data.dataset import Split

    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (num_frames, data_config.height, data_config.width), dtype=np.uint8)
    # Calm and busy stretches, so that the labels hold both classes.
    frames[(np.arange(num_frames) // 12) % 2 == 0] //= 8
    y_tilde = labels_lib.speed_proxy(frames)
    n, h, fps = data_config.time_steps, data_config.horizon, data_config.frames_per_step
    first, last = labels_lib.valid_range(num_frames, n, h, fps)
    return Split(
        name=name,
        frames=frames,
        y_tilde=y_tilde,
        labels=labels_lib.burst_labels(y_tilde, n, h, frames_per_step=fps),
        recording=np.zeros(num_frames, np.int32),
        samples=np.arange(first, last + 1, dtype=np.int64),
    )


@pytest.fixture(scope='module')
def saved_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    import jax

    from convlstm_jax import checkpoints, models

    config = _smoke_config()
    model = models.build_model(config.model)
    shape = (1, config.data.time_steps, config.data.height, config.data.width, config.data.frames_per_step)
    init = jax.jit(lambda key, x: model.init(key, x, train=False))  # one compile, not op by op
    variables = init(jax.random.PRNGKey(0), np.zeros(shape, np.uint8))
    spec = {
        'model': checkpoints.model_fields(config.model),
        'input': checkpoints.input_contract(config.data),
        'source': {'test': 'random init'},
    }
    path = tmp_path_factory.mktemp('tiny') / 'model'
    return checkpoints.save_model_dir(path, spec, jax.tree.map(np.asarray, dict(variables)))


@pytest.fixture
def tiny_model_dir(saved_tiny_model: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """The tiny model, with dataset.load_splits serving tiny random splits."""
    from convlstm_jax.data import dataset

    def load_splits(data_config):
        return {
            name: _tiny_split(name, data_config, 140, seed)
            for seed, name in enumerate(('train', 'validation', 'test'))
        }

    monkeypatch.setattr(dataset, 'load_splits', load_splits, raising=False)
    return saved_tiny_model


def test_model_mode_report(tiny_model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / 'out'
    code = cli.main(
        [
            '--checkpoint',
            str(tiny_model_dir),
            '--split',
            'test',
            '--out',
            str(out),
            '--num_resamples',
            '5',
            '--block_length',
            '20',
        ]
        + ['--batch_size', '8', '--config.data.pipeline=numpy']
    )
    assert code == 0
    content = json.loads((out / 'metrics.json').read_text())
    assert content['frames']['split'] == 'test'
    assert content['selection']['split'] == 'validation'
    assert set(content['predictors']) >= {'model', '-y_tilde[t-1]', 'all-negative'}
    for result in content['predictors'].values():
        for rule in core.THRESHOLD_RULES:
            assert result[rule]['chosen_on'] == 'validation'
    assert content['predictors']['model']['num_samples'] == content['frames']['count']
    for name in PLOTS:
        assert (out / name).stat().st_size > 1000


def test_model_mode_predictions_match_a_direct_apply(tiny_model_dir: pathlib.Path) -> None:
    from convlstm_jax import checkpoints, models
    from convlstm_jax.data import clips

    config = _smoke_config()
    config.data.pipeline = 'numpy'
    spec, variables = checkpoints.load_model(tiny_model_dir)
    model = models.build_model(spec['model'])
    split = _tiny_split('test', config.data, 60, 5)
    probs = model_evaluation.predict_split(model, variables, split, config.data, batch_size=8)
    n, fps = config.data.time_steps, config.data.frames_per_step
    first_clips = np.stack([clips.time_channels(split.frames, int(t), n, fps) for t in split.samples[:3]])
    logits = np.asarray(model.apply(variables, first_clips, train=False))
    np.testing.assert_allclose(probs[:3], 1 / (1 + np.exp(-logits)), rtol=1e-5)
    assert len(probs) == len(split.samples)


def test_model_mode_unknown_split_is_a_clear_error(
    tiny_model_dir: pathlib.Path, tmp_path: pathlib.Path, capsys
):
    code = cli.main(['--checkpoint', str(tiny_model_dir), '--split', 'testing', '--out', str(tmp_path)])
    assert code == 2
    assert "unknown split 'testing'" in capsys.readouterr().err


def test_model_mode_workdir_without_checkpoint_is_a_clear_error(
    tiny_model_dir: pathlib.Path, tmp_path: pathlib.Path, capsys
) -> None:
    workdir = tmp_path / 'workdir'
    (workdir / 'checkpoints').mkdir(parents=True)
    (workdir / 'model.json').write_text((tiny_model_dir / 'model.json').read_text())
    code = cli.main(['--checkpoint', str(workdir), '--out', str(tmp_path / 'out')])
    assert code == 2
    assert 'no checkpoint' in capsys.readouterr().err


def test_data_overrides_must_fit_the_model(tiny_model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A model directory without config.json (an imported model): the defaults with model.json's input
    contract, then the overrides; architecture overrides and unknown fields are one line, exit status 1."""
    from convlstm_jax import checkpoints

    spec = checkpoints.read_spec(tiny_model_dir / 'model.json')
    config = cli_lib.model_config(tiny_model_dir)
    assert (
        config.data.height == spec['input']['height']
        and list(config.model.filters) == spec['model']['filters']
    )
    out = tmp_path / 'out'
    for override, message in (
        ('--config.data.height=99', 'error: --config.data.height would change the architecture'),
        ('--config.data.colour=1', 'error: no such config field in --config.data.colour=1'),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(['--checkpoint', str(tiny_model_dir), '--out', str(out), override])
        assert str(exit_info.value.code).startswith(message), exit_info.value.code
        assert '\n' not in str(exit_info.value.code) and not out.exists()


def test_model_mode_unknown_select_is_a_clear_error(tiny_model_dir: pathlib.Path, tmp_path: pathlib.Path):
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:  # --select is an enum flag (cli.define_checkpoint_flags)
        cli.main(['--checkpoint', str(tiny_model_dir), '--select', 'best', '--out', str(out)])
    message = str(exit_info.value.code)
    assert message.startswith('error: flag --select=best: value should be one of <best_auc|best_loss|latest>')
    assert '\n' not in message and not out.exists()
