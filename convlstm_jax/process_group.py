"""Which multi-process run this process belongs to: a ProcessGroup from explicit values (flags or CONVLSTM_*
variables), else from SLURM or Open MPI, with each process's share of its node's GPUs; None for one process.

distributed.py joins the group this module describes (see its docstring for the order of the sources).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

ENV_PREFIX = 'CONVLSTM_'
ENV_COORDINATOR = ENV_PREFIX + 'COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = ENV_PREFIX + 'NUM_PROCESSES'
ENV_PROCESS_ID = ENV_PREFIX + 'PROCESS_ID'
ENV_LOCAL_DEVICE_IDS = ENV_PREFIX + 'LOCAL_DEVICE_IDS'
ENV_MODE = ENV_PREFIX + 'DISTRIBUTED'
ENV_INIT_TIMEOUT = ENV_PREFIX + 'DISTRIBUTED_INIT_TIMEOUT'
ENV_HEARTBEAT_TIMEOUT = ENV_PREFIX + 'DISTRIBUTED_HEARTBEAT_TIMEOUT'


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
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else env_int(env, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else env_int(env, ENV_PROCESS_ID)
    if local_device_ids is None:
        local_device_ids = env.get(ENV_LOCAL_DEVICE_IDS)
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
            f'{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); missing: {", ".join(missing)}'
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise DistributedSetupError(
            f'expected num_processes >= 1 and 0 <= process_id < num_processes, found num_processes='
            f'{num_processes}, process_id={process_id}'
        )
    split_host_port(coordinator_address)
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
            f'{ENV_COORDINATOR}=FIRST_HOST:PORT (the ranks then come from OMPI_COMM_WORLD_*)'
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
    gpus_on_node = env_int(env, 'SLURM_GPUS_ON_NODE')
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


def env_int(env: Mapping[str, str], name: str) -> int | None:
    """The integer in variable `name` of `env`; None where it is unset or empty."""
    value = env.get(name)
    if value is None or value == '':
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f'{name} must be an integer, found {value!r}') from None


def split_host_port(address: str) -> tuple[str, int]:
    """(host, port) of a coordinator address HOST:PORT, else a DistributedSetupError."""
    host, sep, port = address.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedSetupError(
            f"expected a coordinator address HOST:PORT (e.g. 'node001:12345'), found {address!r}"
        )
    return host, int(port)
