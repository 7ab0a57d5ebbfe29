"""Joining a multi-process run (`jax.distributed`), and letting every process agree to stop.

How main.py uses it:

    from convlstm_jax import distributed
    distributed.define_flags()                       # at import time, beside the other absl flags
    def main(argv):
        group = distributed.initialize_from_flags()  # first thing: before any JAX computation
        ...                                          # None: a single-process run (jax.distributed untouched)
        # in the training loop, on every process at the same steps:
        if distributed.should_stop(stop_requested):  # True on all processes if True on any
            save and leave the loop

Where the process group comes from, first match wins (docs/launch.md lists the flags and variables):
1. Flags `--coordinator_address --num_processes --process_id [--local_device_ids]`, or their CONVLSTM_*
   variables (a flag beats its variable); under srun/mpirun a coordinator alone is enough.
2. SLURM or Open MPI, detected by JAX's own cluster code (`JAX_COORDINATOR_PORT` overrides the port).
3. Otherwise, or with one process, or with `--distributed=off`: a single-process run.

Local devices under SLURM/Open MPI: the GPUs a process sees are split evenly among the processes of its node
(JAX alone would give each only the GPU numbered like its local rank); `--local_device_ids` overrides this.

Failure behaviour, bounded by `--distributed_heartbeat_timeout` (default 100 s): process 0 first checks that
the coordinator port is free (JAX 0.10 segfaults on a port in use); a dead process is noticed by the others
within the heartbeat timeout; an uncaught exception prints and exits at once with status 1 instead of waiting
in JAX's shutdown barrier; a process that cannot reach the coordinator exits after its init timeout.

JAX's preemption service is switched off: it would install its own SIGTERM handler over Python's and swallow
the signal; stopping on SIGTERM is `should_stop`'s job. On CPU, collectives across processes use gloo.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
import sys
import traceback
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import flags

ENV_PREFIX = 'CONVLSTM_'
_ENV_COORDINATOR = ENV_PREFIX + 'COORDINATOR_ADDRESS'
_ENV_NUM_PROCESSES = ENV_PREFIX + 'NUM_PROCESSES'
_ENV_PROCESS_ID = ENV_PREFIX + 'PROCESS_ID'
_ENV_LOCAL_DEVICE_IDS = ENV_PREFIX + 'LOCAL_DEVICE_IDS'
_ENV_MODE = ENV_PREFIX + 'DISTRIBUTED'
_ENV_INIT_TIMEOUT = ENV_PREFIX + 'DISTRIBUTED_INIT_TIMEOUT'
_ENV_HEARTBEAT_TIMEOUT = ENV_PREFIX + 'DISTRIBUTED_HEARTBEAT_TIMEOUT'

MODES = ('auto', 'off')


class DistributedSetupError(RuntimeError):
    """The multi-process run cannot be joined as configured."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """One process's view of a multi-process run."""

    coordinator_address: str  # HOST:PORT of process 0's coordination service
    num_processes: int
    process_id: int
    local_device_ids: tuple[int, ...] | None  # None: every device this process sees
    source: str  # 'flags/env', 'slurm' or 'ompi'


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the absl flags read by `initialize_from_flags` (each defaults to its CONVLSTM_* variable)."""
    env = os.environ
    flags.DEFINE_enum(
        'distributed',
        env.get(_ENV_MODE, 'auto'),
        MODES,
        'auto: join a multi-process run from the flags below or SLURM/Open MPI; off: always one process.',
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        'coordinator_address',
        env.get(_ENV_COORDINATOR),
        'HOST:PORT of process 0 (reachable from every process).',
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        'num_processes', _env_int(env, _ENV_NUM_PROCESSES), 'Processes in the run.', flag_values=flag_values
    )
    flags.DEFINE_integer(
        'process_id',
        _env_int(env, _ENV_PROCESS_ID),
        'This process, 0..num_processes-1.',
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        'local_device_ids',
        env.get(_ENV_LOCAL_DEVICE_IDS),
        "Devices this process drives: '0,1,2,3', or 'all'. Default: see convlstm_jax/distributed.py.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        'distributed_init_timeout',
        _env_int(env, _ENV_INIT_TIMEOUT) or 300,
        'Seconds to wait for every process to join (also the shutdown wait).',
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        'distributed_heartbeat_timeout',
        _env_int(env, _ENV_HEARTBEAT_TIMEOUT) or 100,
        'Seconds after which a silent process counts as dead and the others exit.',
        flag_values=flag_values,
    )


def group_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ProcessGroup | None:
    """The run the flags (or environment, or scheduler) describe; None for a single-process run."""
    f = flag_values
    if f.distributed == 'off':
        return None
    return resolve(
        coordinator_address=f.coordinator_address,
        num_processes=f.num_processes,
        process_id=f.process_id,
        local_device_ids=f.local_device_ids,
    )


def initialize_from_flags(
    flag_values: flags.FlagValues = flags.FLAGS, group: ProcessGroup | None | str = 'from flags'
) -> ProcessGroup | None:
    """Joins `group` (default: `group_from_flags`) with the flags' timeouts; None for a single process."""
    if group == 'from flags':
        group = group_from_flags(flag_values)
    initialize(
        group,
        init_timeout=flag_values.distributed_init_timeout,
        heartbeat_timeout=flag_values.distributed_heartbeat_timeout,
    )
    return group


def resolve(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: str | Sequence[int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProcessGroup | None:
    """The process group from explicit values, else SLURM/Open MPI; None when the run has one process.

    Values left None are read from the CONVLSTM_* variables of `environ` (default os.environ). Scheduler
    variables (SLURM_*, OMPI_*, CUDA_VISIBLE_DEVICES) always come from os.environ, where JAX reads them too.
    """
    env = os.environ if environ is None else environ
    coordinator_address = coordinator_address or env.get(_ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(env, _ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(env, _ENV_PROCESS_ID)
    if local_device_ids is None:
        local_device_ids = env.get(_ENV_LOCAL_DEVICE_IDS)
    device_ids = parse_device_ids(local_device_ids)

    if any(v is not None for v in (coordinator_address, num_processes, process_id)):
        launcher = launcher_ranks(os.environ)
        source = 'flags/env'
        if launcher is not None and num_processes is None and process_id is None:
            # The coordinator named by hand, the ranks from mpirun/srun (e.g. Open MPI 5, missed by JAX 0.10).
            name, num_processes, process_id, local_rank, local_size = launcher
            source = f'flags/env + {name} ranks'
            if device_ids is None:
                device_ids = local_gpu_share(local_rank, local_size, os.environ)
        return _explicit_group(coordinator_address, num_processes, process_id, device_ids, source)
    return _cluster_group(device_ids, os.environ)


def launcher_ranks(env: Mapping[str, str]) -> tuple[str, int, int, int, int] | None:
    """(launcher, processes, rank, local rank, processes on this node) from Open MPI or SLURM variables."""
    if 'OMPI_COMM_WORLD_SIZE' in env and 'OMPI_COMM_WORLD_RANK' in env:
        return (
            'ompi',
            int(env['OMPI_COMM_WORLD_SIZE']),
            int(env['OMPI_COMM_WORLD_RANK']),
            int(env.get('OMPI_COMM_WORLD_LOCAL_RANK', '0')),
            int(env.get('OMPI_COMM_WORLD_LOCAL_SIZE', '1')),
        )
    if all(name in env for name in ('SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')):
        return (
            'slurm',
            int(env['SLURM_NTASKS']),
            int(env['SLURM_PROCID']),
            int(env['SLURM_LOCALID']),
            slurm_tasks_on_node(env),
        )
    return None


def parse_device_ids(value: str | Sequence[int] | None) -> tuple[int, ...] | str | None:
    """'0,1,3' → (0, 1, 3); 'all' stays 'all'; None/'' → None."""
    if value is None or value == '':
        return None
    if isinstance(value, str):
        if value.strip() == 'all':
            return 'all'
        try:
            ids = tuple(int(v) for v in value.split(','))
        except ValueError:
            raise DistributedSetupError(
                f"local device ids must be comma-separated integers or 'all', found {value!r}"
            ) from None
    else:
        ids = tuple(int(v) for v in value)
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise DistributedSetupError(
            f'local device ids must be distinct non-negative integers, found {value!r}'
        )
    return ids


def _explicit_group(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    device_ids: tuple[int, ...] | str | None,
    source: str,
) -> ProcessGroup | None:
    missing = [
        name
        for name, value in (
            ('coordinator_address', coordinator_address),
            ('num_processes', num_processes),
            ('process_id', process_id),
        )
        if value is None
    ]
    if missing:
        raise DistributedSetupError(
            'a multi-process run needs --coordinator_address, --num_processes and --process_id (or '
            f'{_ENV_COORDINATOR}, {_ENV_NUM_PROCESSES}, {_ENV_PROCESS_ID}); missing: {", ".join(missing)}'
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise DistributedSetupError(
            f'expected num_processes >= 1 and 0 <= process_id < num_processes, found num_processes='
            f'{num_processes}, process_id={process_id}'
        )
    _split_host_port(coordinator_address)
    if num_processes == 1:
        return None
    return ProcessGroup(coordinator_address, num_processes, process_id, _concrete_ids(device_ids), source)


def _cluster_group(device_ids: tuple[int, ...] | str | None, env: Mapping[str, str]) -> ProcessGroup | None:
    """SLURM or Open MPI as JAX detects them (JAX's cluster classes read os.environ)."""
    from jax._src import clusters  # JAX's own detection, so the coordinator address is the one JAX uses.

    for cluster in (clusters.OmpiCluster, clusters.SlurmCluster):
        if not cluster.is_env_present():
            continue
        num_processes = cluster.get_process_count()
        if num_processes <= 1:
            return None
        address = cluster.get_coordinator_address(
            timeout_secs=None, override_coordinator_port=env.get('JAX_COORDINATOR_PORT')
        )
        if device_ids is None:
            _, _, _, local_rank, local_size = launcher_ranks(env)
            device_ids = local_gpu_share(local_rank, local_size, env)
        return ProcessGroup(
            address, num_processes, cluster.get_process_id(), _concrete_ids(device_ids), cluster.name
        )
    if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
        raise DistributedSetupError(
            f'started by mpirun as {env["OMPI_COMM_WORLD_SIZE"]} processes, but JAX does not recognize '
            f'this Open MPI (version {env.get("OMPI_VERSION", "unknown")}; Open MPI 5 needs mpi4py on JAX '
            '0.11 and is not supported by older JAX): name the coordinator, e.g. mpirun -x '
            f'{_ENV_COORDINATOR}=FIRST_HOST:PORT (the ranks then come from OMPI_COMM_WORLD_*)'
        )
    return None


def _concrete_ids(device_ids: tuple[int, ...] | str | None) -> tuple[int, ...] | None:
    if device_ids == 'all':
        return None
    return device_ids


def local_gpu_share(local_rank: int, local_size: int, env: Mapping[str, str]) -> tuple[int, ...] | None:
    """The GPUs a launcher-started process should drive: its share of the GPUs it sees (see module doc)."""
    gpus = visible_gpu_count(env)
    if gpus == 0:
        return None  # CPU: every local CPU device.
    gpus_on_node = _env_int(env, 'SLURM_GPUS_ON_NODE')
    bound_by_scheduler = gpus < local_size or (gpus_on_node is not None and gpus < gpus_on_node)
    if local_size == 1 or bound_by_scheduler:
        return tuple(range(gpus))
    if gpus % local_size:
        raise DistributedSetupError(
            f'{local_size} processes on this node cannot share {gpus} visible GPUs evenly; pass '
            '--local_device_ids (or CONVLSTM_LOCAL_DEVICE_IDS) to each process'
        )
    per_process = gpus // local_size
    return tuple(range(local_rank * per_process, (local_rank + 1) * per_process))


def visible_gpu_count(env: Mapping[str, str]) -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else the /dev/nvidiaN device files."""
    visible = env.get('CUDA_VISIBLE_DEVICES')
    if visible is not None:
        return len([d for d in visible.split(',') if d.strip() and d.strip() != '-1'])
    try:
        return sum(1 for name in os.listdir('/dev') if re.fullmatch(r'nvidia\d+', name))
    except OSError:
        return 0


def slurm_tasks_on_node(env: Mapping[str, str]) -> int:
    """Tasks of this SLURM step on this node, from SLURM_STEP_TASKS_PER_NODE ('2(x3),1') and SLURM_NODEID."""
    spec = env.get('SLURM_STEP_TASKS_PER_NODE') or env.get('SLURM_TASKS_PER_NODE')
    if not spec:
        return int(env.get('SLURM_NTASKS_PER_NODE', '1'))
    counts: list[int] = []
    for part in spec.split(','):
        match = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', part.strip())
        if match is None:
            raise DistributedSetupError(
                f"cannot parse SLURM tasks per node {spec!r} (expected e.g. '2(x3),1')"
            )
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    node = int(env.get('SLURM_NODEID', '0'))
    if node >= len(counts):
        raise DistributedSetupError(
            f'SLURM_NODEID={node} but tasks per node {spec!r} lists {len(counts)} nodes'
        )
    return counts[node]


def initialize(group: ProcessGroup | None, *, init_timeout: int = 300, heartbeat_timeout: int = 100) -> None:
    """Joins `group` through jax.distributed; does nothing for None (a single-process run)."""
    if group is None:
        return
    if group.process_id == 0:
        ensure_port_free(group.coordinator_address)
    # Stopping on SIGTERM (should_stop) needs Python's handler; JAX's preemption notifier would replace it.
    jax.config.update('jax_enable_preemption_service', False)
    if 'JAX_CPU_COLLECTIVES_IMPLEMENTATION' not in os.environ:
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    _say(
        f'process {group.process_id} of {group.num_processes} ({group.source}): joining the coordinator at '
        f'{group.coordinator_address}, waiting up to {init_timeout} s'
    )
    jax.distributed.initialize(
        coordinator_address=group.coordinator_address,
        num_processes=group.num_processes,
        process_id=group.process_id,
        local_device_ids=list(group.local_device_ids) if group.local_device_ids is not None else None,
        cluster_detection_method='deactivate',  # Resolved above; JAX must not re-detect local devices.
        initialization_timeout=init_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=init_timeout,
    )
    if jax.process_count() != group.num_processes:
        raise DistributedSetupError(
            f'expected {group.num_processes} processes after joining, JAX reports {jax.process_count()}'
        )
    _install_exit_on_error(group, heartbeat_timeout)
    _say(
        f'process {jax.process_index()} of {jax.process_count()} joined: {jax.local_device_count()} local of '
        f'{jax.device_count()} devices ({jax.default_backend()})'
    )


def _say(message: str) -> None:
    """Always shown (main quiets absl logging): where a multi-process run waits is what users need to see."""
    print(f'convlstm_jax: {message}', file=sys.stderr, flush=True)


def ensure_port_free(coordinator_address: str) -> None:
    """Raises DistributedSetupError if the coordinator port is taken on this machine (JAX 0.10 segfaults)."""
    bind_address = os.environ.get('JAX_COORDINATOR_BIND_ADDRESS')
    host, port = _split_host_port(bind_address or coordinator_address)
    # JAX binds [::]:PORT (every interface, IPv4 too) unless JAX_COORDINATOR_BIND_ADDRESS says otherwise.
    host = host.strip('[]') if bind_address else '::'
    try:
        _probe_bind(host, port)
    except OSError as e:
        reason = 'is already in use' if e.errno == errno.EADDRINUSE else f'cannot be bound ({e.strerror})'
        raise DistributedSetupError(
            f'coordinator port {port} (from {coordinator_address!r}) {reason} on this machine, the '
            'coordinator (process 0); choose another port (--coordinator_address=HOST:OTHER_PORT, or '
            'JAX_COORDINATOR_PORT under SLURM/Open MPI) or stop the process holding it'
        ) from None


def _probe_bind(host: str, port: int) -> None:
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # No IPv6 on this machine: every IPv4 interface is what JAX gets then.
        family, host = socket.AF_INET, '0.0.0.0'
        probe = socket.socket(family, socket.SOCK_STREAM)
    with probe:
        # As gRPC does: a port left in TIME_WAIT by an earlier run is free, one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedSetupError(
            f"expected a coordinator address HOST:PORT (e.g. 'node001:12345'), found {address!r}"
        )
    return host, int(port)


def _install_exit_on_error(group: ProcessGroup, heartbeat_timeout: int) -> None:
    """An uncaught exception ends this process now: the others fail fast instead of waiting on it."""

    def hook(exc_type, exc, tb):
        try:
            traceback.print_exception(exc_type, exc, tb)
            sys.stderr.write(
                f'\nconvlstm_jax: process {group.process_id} of {group.num_processes} failed with the error '
                f'above; exiting now so that the other processes stop too (their collectives fail, or JAX '
                f'terminates them within the {heartbeat_timeout} s heartbeat timeout). If the error is a '
                'failed collective or a lost connection, another process died first: see its log.\n'
            )
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(1)

    sys.excepthook = hook


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == '':
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f'{name} must be an integer, found {value!r}') from None


_any_process_flag = jax.pmap(lambda flag: jax.lax.pmax(flag, 'processes'), axis_name='processes')


def should_stop(local_flag: bool) -> bool:
    """True on every process if `local_flag` is True on any (e.g. a SIGTERM reached one of them).

    A collective: in a multi-process run every process must call it at the same steps. Costs one tiny
    all-reduce; a single-process run returns `local_flag` without touching a device.
    """
    if jax.process_count() == 1:
        return bool(local_flag)
    flags_per_device = np.full((jax.local_device_count(),), int(bool(local_flag)), np.int32)
    return bool(np.asarray(_any_process_flag(flags_per_device))[0])
