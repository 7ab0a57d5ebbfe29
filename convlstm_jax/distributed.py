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
process_group.py works the group out (`resolve`); this module defines the flags, joins and agrees to stop.

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

import errno
import os
import socket
import sys
import traceback

import jax
import numpy as np
from absl import flags

from convlstm_jax.process_group import (
    ENV_COORDINATOR,
    ENV_HEARTBEAT_TIMEOUT,
    ENV_INIT_TIMEOUT,
    ENV_LOCAL_DEVICE_IDS,
    ENV_MODE,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    DistributedSetupError,
    ProcessGroup,
    env_int,
    resolve,
    split_host_port,
)

MODES = ('auto', 'off')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the absl flags read by `initialize_from_flags` (each defaults to its CONVLSTM_* variable)."""
    env = os.environ
    flags.DEFINE_enum(
        'distributed',
        env.get(ENV_MODE, 'auto'),
        MODES,
        'auto: join a multi-process run from the flags below or SLURM/Open MPI; off: always one process.',
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        'coordinator_address',
        env.get(ENV_COORDINATOR),
        'HOST:PORT of process 0 (reachable from every process).',
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        'num_processes', env_int(env, ENV_NUM_PROCESSES), 'Processes in the run.', flag_values=flag_values
    )
    flags.DEFINE_integer(
        'process_id',
        env_int(env, ENV_PROCESS_ID),
        'This process, 0..num_processes-1.',
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        'local_device_ids',
        env.get(ENV_LOCAL_DEVICE_IDS),
        "Devices this process drives: '0,1,2,3', or 'all'. Default: see convlstm_jax/distributed.py.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        'distributed_init_timeout',
        env_int(env, ENV_INIT_TIMEOUT) or 300,
        'Seconds to wait for every process to join (also the shutdown wait).',
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        'distributed_heartbeat_timeout',
        env_int(env, ENV_HEARTBEAT_TIMEOUT) or 100,
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
    host, port = split_host_port(bind_address or coordinator_address)
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
