"""convlstm_jax.distributed: resolving the process group, and real 2-process CPU runs over localhost."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from convlstm_jax import distributed, process_group

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

CLUSTER_VARS = (
    'SLURM_JOB_ID',
    'SLURM_STEP_NODELIST',
    'SLURM_NTASKS',
    'SLURM_PROCID',
    'SLURM_LOCALID',
    'SLURM_NODEID',
    'SLURM_STEP_TASKS_PER_NODE',
    'SLURM_TASKS_PER_NODE',
    'SLURM_NTASKS_PER_NODE',
    'SLURM_GPUS_ON_NODE',
    'OMPI_MCA_orte_hnp_uri',
    'OMPI_COMM_WORLD_SIZE',
    'OMPI_COMM_WORLD_RANK',
    'OMPI_COMM_WORLD_LOCAL_RANK',
    'OMPI_COMM_WORLD_LOCAL_SIZE',
    'OMPI_VERSION',
    'JAX_COORDINATOR_PORT',
    'CUDA_VISIBLE_DEVICES',
)


@pytest.fixture
def clean_env(monkeypatch):
    """No scheduler variables from the machine running the tests."""
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith(process_group.ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------
# Resolving the group (no JAX runtime involved)


def test_single_process_without_flags_env_or_scheduler(clean_env):
    import jax

    assert process_group.resolve() is None
    distributed.initialize(None)
    assert not jax.distributed.is_initialized()  # a single-process run never touches jax.distributed


def test_explicit_values(clean_env):
    group = process_group.resolve(coordinator_address='node7:1234', num_processes=4, process_id=3)
    assert group == process_group.ProcessGroup('node7:1234', 4, 3, None, 'flags/env')


def test_environment_variables_and_flag_precedence(clean_env):
    env = {
        'CONVLSTM_COORDINATOR_ADDRESS': 'localhost:999',
        'CONVLSTM_NUM_PROCESSES': '2',
        'CONVLSTM_PROCESS_ID': '1',
        'CONVLSTM_LOCAL_DEVICE_IDS': '0,1',
    }
    assert process_group.resolve(environ=env) == process_group.ProcessGroup(
        'localhost:999', 2, 1, (0, 1), 'flags/env'
    )
    assert process_group.resolve(process_id=0, local_device_ids='all', environ=env).process_id == 0
    assert process_group.resolve(process_id=0, local_device_ids='all', environ=env).local_device_ids is None


def test_one_process_is_a_single_process_run(clean_env):
    assert process_group.resolve(coordinator_address='localhost:1', num_processes=1, process_id=0) is None


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(num_processes=2, process_id=0), 'missing: coordinator_address'),
        (dict(coordinator_address='h:1', process_id=0), 'missing: num_processes'),
        (dict(coordinator_address='h:1', num_processes=2, process_id=2), 'process_id < num_processes'),
        (dict(coordinator_address='node7', num_processes=2, process_id=0), 'HOST:PORT'),
        (dict(coordinator_address='h:1', num_processes=2, process_id=0, local_device_ids='0,x'), 'integers'),
        (dict(coordinator_address='h:1', num_processes=2, process_id=0, local_device_ids='1,1'), 'distinct'),
    ],
)
def test_bad_values_get_clear_errors(clean_env, kwargs, message):
    with pytest.raises(process_group.DistributedSetupError, match=message):
        process_group.resolve(**kwargs)


def test_bad_integer_variable(clean_env):
    with pytest.raises(
        process_group.DistributedSetupError, match='CONVLSTM_NUM_PROCESSES must be an integer'
    ):
        process_group.resolve(environ={'CONVLSTM_NUM_PROCESSES': 'two'})


def set_slurm(monkeypatch, *, ntasks, procid, localid, nodeid, tasks_per_node, gpus=None, gpus_on_node=None):
    values = {
        'SLURM_JOB_ID': '4242',
        'SLURM_STEP_NODELIST': 'gpu[007-008]',
        'SLURM_NTASKS': str(ntasks),
        'SLURM_PROCID': str(procid),
        'SLURM_LOCALID': str(localid),
        'SLURM_NODEID': str(nodeid),
        'SLURM_STEP_TASKS_PER_NODE': tasks_per_node,
    }
    if gpus is not None:
        values['CUDA_VISIBLE_DEVICES'] = gpus
    if gpus_on_node is not None:
        values['SLURM_GPUS_ON_NODE'] = str(gpus_on_node)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


SLURM_PORT = 4242 % 4096 + 65536 - 4096  # JAX's port rule for job 4242


def test_slurm_one_process_per_node_drives_every_gpu(clean_env):
    set_slurm(clean_env, ntasks=2, procid=1, localid=0, nodeid=1, tasks_per_node='1(x2)', gpus='0,1,2,3')
    group = process_group.resolve()
    assert group == process_group.ProcessGroup(f'gpu007:{SLURM_PORT}', 2, 1, (0, 1, 2, 3), 'slurm')


def test_slurm_one_process_per_gpu(clean_env):
    set_slurm(clean_env, ntasks=8, procid=6, localid=2, nodeid=1, tasks_per_node='4(x2)', gpus='0,1,2,3')
    assert process_group.resolve().local_device_ids == (2,)


def test_slurm_gpus_bound_per_task_by_the_scheduler(clean_env):
    set_slurm(
        clean_env, ntasks=8, procid=6, localid=2, nodeid=1, tasks_per_node='4(x2)', gpus='2', gpus_on_node=4
    )
    assert process_group.resolve().local_device_ids == (0,)  # every GPU it sees: its own one


def test_slurm_uneven_split_asks_for_local_device_ids(clean_env):
    set_slurm(clean_env, ntasks=3, procid=0, localid=0, nodeid=0, tasks_per_node='3', gpus='0,1,2,3')
    with pytest.raises(process_group.DistributedSetupError, match='--local_device_ids'):
        process_group.resolve()


def test_slurm_cpu_nodes_port_override_and_explicit_ids(clean_env):
    set_slurm(clean_env, ntasks=2, procid=0, localid=0, nodeid=0, tasks_per_node='1(x2)', gpus='')
    clean_env.setenv('JAX_COORDINATOR_PORT', '23456')
    assert process_group.resolve() == process_group.ProcessGroup('gpu007:23456', 2, 0, None, 'slurm')
    assert process_group.resolve(local_device_ids='1').local_device_ids == (1,)


def test_slurm_single_task_is_a_single_process_run(clean_env):
    set_slurm(clean_env, ntasks=1, procid=0, localid=0, nodeid=0, tasks_per_node='1', gpus='0')
    assert process_group.resolve() is None


def test_open_mpi(clean_env):
    for name, value in {
        'OMPI_MCA_orte_hnp_uri': '1531576320.0;tcp://10.96.0.1,10.148.0.1:34911',
        'OMPI_COMM_WORLD_SIZE': '4',
        'OMPI_COMM_WORLD_RANK': '3',
        'OMPI_COMM_WORLD_LOCAL_RANK': '1',
        'OMPI_COMM_WORLD_LOCAL_SIZE': '2',
        'CUDA_VISIBLE_DEVICES': '0,1,2,3',
    }.items():
        clean_env.setenv(name, value)
    group = process_group.resolve()
    assert (group.num_processes, group.process_id, group.local_device_ids, group.source) == (
        4,
        3,
        (2, 3),
        'ompi',
    )
    assert group.coordinator_address.startswith('10.96.0.1:')


def test_open_mpi_5_unknown_to_jax_asks_for_a_coordinator(clean_env):
    for name, value in {
        'OMPI_COMM_WORLD_SIZE': '2',
        'OMPI_COMM_WORLD_RANK': '1',
        'OMPI_VERSION': '5.0.3',
    }.items():
        clean_env.setenv(name, value)
    if _jax_handles_open_mpi_5():
        pytest.skip('this JAX detects Open MPI 5 itself (through mpi4py)')
    with pytest.raises(
        process_group.DistributedSetupError, match='CONVLSTM_COORDINATOR_ADDRESS=FIRST_HOST:PORT'
    ):
        process_group.resolve()
    group = process_group.resolve(coordinator_address='node1:5555')
    assert group == process_group.ProcessGroup('node1:5555', 2, 1, None, 'flags/env + ompi ranks')


def _jax_handles_open_mpi_5() -> bool:
    from jax._src import clusters

    return clusters.OmpiCluster.is_env_present()


def test_named_coordinator_with_srun_ranks_shares_the_gpus(clean_env):
    set_slurm(clean_env, ntasks=4, procid=3, localid=1, nodeid=1, tasks_per_node='2(x2)', gpus='0,1,2,3')
    clean_env.delenv('SLURM_STEP_NODELIST')  # not an srun step JAX recognizes
    group = process_group.resolve(coordinator_address='head:7777')
    assert group == process_group.ProcessGroup('head:7777', 4, 3, (2, 3), 'flags/env + slurm ranks')


@pytest.mark.parametrize('spec, node, expected', [('4', 0, 4), ('2(x3),1', 2, 2), ('2(x3),1', 3, 1)])
def test_slurm_tasks_on_node(spec, node, expected):
    assert (
        process_group.slurm_tasks_on_node({'SLURM_STEP_TASKS_PER_NODE': spec, 'SLURM_NODEID': str(node)})
        == expected
    )


def test_flags_default_to_the_environment_and_off_means_one_process(clean_env):
    from absl import flags

    clean_env.setenv('CONVLSTM_COORDINATOR_ADDRESS', 'localhost:1')
    clean_env.setenv('CONVLSTM_NUM_PROCESSES', '2')
    clean_env.setenv('CONVLSTM_DISTRIBUTED_HEARTBEAT_TIMEOUT', '7')
    values = flags.FlagValues()
    distributed.define_flags(values)
    values(['main', '--process_id=1', '--distributed=off'])
    assert (values.coordinator_address, values.num_processes, values.process_id) == ('localhost:1', 2, 1)
    assert (values.distributed_heartbeat_timeout, values.distributed_init_timeout) == (7, 300)
    assert distributed.initialize_from_flags(values) is None  # jax.distributed untouched


def test_port_in_use_is_reported_before_jax_is_asked(clean_env):
    with socket.socket() as holder:
        holder.bind(('127.0.0.1', 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(process_group.DistributedSetupError, match=f'port {port} .* already in use'):
            distributed.ensure_port_free(f'localhost:{port}')
    distributed.ensure_port_free(f'localhost:{free_port()}')


def test_should_stop_in_a_single_process():
    assert distributed.should_stop(True) is True
    assert distributed.should_stop(False) is False


# ---------------------------------------------------------------------------------------------------------
# Two real processes, one CPU device each, joined over localhost

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from convlstm_jax import distributed, process_group

    mode = sys.argv[1]
    group = process_group.resolve()
    distributed.initialize(group, init_timeout=20, heartbeat_timeout=3)
    import jax

    me = jax.process_index()
    total = jax.pmap(lambda x: jax.lax.psum(x, 'p'), axis_name='p')(np.array([me + 1.0]))
    print('psum', float(total[0]), 'devices', jax.local_device_count(), jax.device_count(), flush=True)
    print('stop', distributed.should_stop(False), distributed.should_stop(me == 1), flush=True)
    if mode == 'die' and me == 1:
        os._exit(7)
    if mode == 'die':
        time.sleep(1)  # process 1 is gone: the next collective fails
        for _ in range(30):
            distributed.should_stop(False)
            time.sleep(0.5)
    if mode == 'die_idle':
        if me == 1:
            os._exit(7)
        time.sleep(60)  # no collective: only the heartbeat can notice process 1 is gone
    print('done', flush=True)
    """
)


def start_workers(tmp_path, mode: str, port: int, num_processes: int = 2) -> list[subprocess.Popen]:
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    processes = []
    for i in range(num_processes):
        env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS and k != 'XLA_FLAGS'}
        env.update(
            JAX_PLATFORMS='cpu',
            PYTHONPATH=str(REPO_ROOT),
            CONVLSTM_COORDINATOR_ADDRESS=f'localhost:{port}',
            CONVLSTM_NUM_PROCESSES=str(num_processes),
            CONVLSTM_PROCESS_ID=str(i),
        )
        log = open(tmp_path / f'process_{i}.log', 'w')
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), mode], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )
        log.close()
    return processes


def wait_all(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in processes:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes


@pytest.mark.slow
def test_two_processes_psum_and_agree_to_stop(tmp_path):
    processes = start_workers(tmp_path, 'ok', free_port())
    codes = wait_all(processes, timeout=120)
    logs = [(tmp_path / f'process_{i}.log').read_text() for i in range(2)]
    assert codes == [0, 0], logs
    for log in logs:
        assert 'psum 3.0 devices 1 2' in log  # 1 + 2 over both processes
        assert 'stop False True' in log  # process 1's flag stops process 0 too


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['die', 'die_idle'])
def test_a_dead_process_makes_the_other_exit_non_zero(tmp_path, mode):
    processes = start_workers(tmp_path, mode, free_port())
    processes[1].wait(timeout=90)
    died_at = time.monotonic()
    codes = wait_all(processes[:1], timeout=60)
    elapsed = time.monotonic() - died_at
    log = (tmp_path / 'process_0.log').read_text()
    assert processes[1].returncode == 7, (tmp_path / 'process_1.log').read_text()
    assert codes[0] != 0 and 'done' not in log, log
    assert elapsed < 30, f'took {elapsed:.0f} s to notice, heartbeat timeout 3 s'
    if mode == 'die':  # the failed collective, then our message
        assert 'process 0 of 2 failed with the error above' in log, log
    else:  # JAX's coordination service noticed the missing heartbeats
        assert 'detected fatal errors' in log or 'heartbeat' in log, log


def test_port_in_use_exits_cleanly_not_with_a_segfault(tmp_path):
    (tmp_path / 'worker.py').write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    with socket.socket() as holder:
        holder.bind(('127.0.0.1', 0))
        holder.listen()
        port = holder.getsockname()[1]
        env.update(
            JAX_PLATFORMS='cpu',
            PYTHONPATH=str(REPO_ROOT),
            CONVLSTM_COORDINATOR_ADDRESS=f'localhost:{port}',
            CONVLSTM_NUM_PROCESSES='2',
            CONVLSTM_PROCESS_ID='0',
        )
        result = subprocess.run(
            [sys.executable, str(tmp_path / 'worker.py'), 'ok'],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert f'coordinator port {port}' in result.stderr and 'already in use' in result.stderr, result.stderr
