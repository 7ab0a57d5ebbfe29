#!/usr/bin/env bash
# N CPU processes on this machine, joined by jax.distributed over localhost with gloo collectives: the
# rehearsal of a multi-node run (and what the tests use).
#
#   launch/local_multiprocess.sh N ARGS...
#   launch/local_multiprocess.sh 2 --config configs/two_layer.py:smoke --workdir runs/mp2
#
# ARGS go to `python -m convlstm_jax.main` unchanged. Each process sees DEVICES_PER_PROCESS CPU devices, so
# the run has N x DEVICES_PER_PROCESS devices and the global batch must be divisible by that.
# Process i logs to LOG_DIR/process_i.log; process 0's output is also shown here. If any process fails, the
# others are stopped and this script exits with the failed process's status. SIGTERM/SIGINT sent to this
# script is passed on to every process (each finishes its step; they agree to stop, save and exit).
#
# Environment:
#   DEVICES_PER_PROCESS  CPU devices per process (default 1)
#   COORDINATOR_PORT     port of process 0's coordinator on localhost (default: a free one)
#   LOG_DIR              per-process logs (default: WORKDIR/logs when ARGS have --workdir, else a temp dir)
#   PYTHON               interpreter (default: python3)
#   GRACE_SECONDS        after a process fails, how long the others get to exit before SIGKILL (60)
#   CONVLSTM_DISTRIBUTED_HEARTBEAT_TIMEOUT, CONVLSTM_DISTRIBUTED_INIT_TIMEOUT  seconds (see distributed.py)
set -euo pipefail

usage() {
    echo "usage: $0 N ARGS...   (N >= 1 CPU processes; ARGS go to python -m convlstm_jax.main)" >&2
    exit 2
}

[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
num_processes=$1
shift
python=${PYTHON:-python3}
devices_per_process=${DEVICES_PER_PROCESS:-1}

workdir_from_args() {
    local previous=''
    for arg in "$@"; do
        case $arg in
            --workdir=*) echo "${arg#--workdir=}"; return ;;
        esac
        if [[ $previous == --workdir ]]; then
            echo "$arg"
            return
        fi
        previous=$arg
    done
}

workdir=$(workdir_from_args "$@")
if [[ -n ${LOG_DIR:-} ]]; then
    log_dir=$LOG_DIR
elif [[ -n $workdir ]]; then
    log_dir=$workdir/logs
else
    log_dir=$(mktemp -d -t convlstm_multiprocess.XXXXXX)
fi
mkdir -p "$log_dir"

free_port='import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
port=${COORDINATOR_PORT:-$("$python" -c "$free_port")}
echo "local_multiprocess: $num_processes processes x $devices_per_process CPU device(s)," \
    "coordinator localhost:$port, logs in $log_dir" >&2

pids=()
for ((i = 0; i < num_processes; i++)); do
    log=$log_dir/process_$i.log
    : >"$log"
    env JAX_PLATFORMS=cpu \
        CONVLSTM_CPU_DEVICES="$devices_per_process" \
        CONVLSTM_COORDINATOR_ADDRESS="localhost:$port" \
        CONVLSTM_NUM_PROCESSES="$num_processes" \
        CONVLSTM_PROCESS_ID="$i" \
        "$python" -u -m convlstm_jax.main "$@" >"$log" 2>&1 &
    pids+=("$!")
done

# Process 0's log on this terminal while the run lasts.
tail -n +1 -f "$log_dir/process_0.log" &
tail_pid=$!

stop_all() {
    local signal=$1
    for pid in "${pids[@]}"; do
        kill "-$signal" "$pid" 2>/dev/null || true
    done
}
signalled=0
# shellcheck disable=SC2329  # invoked by the trap below
on_signal() {
    signalled=1
    echo "local_multiprocess: passing the signal on to every process" >&2
    stop_all TERM
}
trap on_signal TERM INT

# Poll rather than `wait -n`: portable to old bash, and a trapped signal cannot lose an exit status.
status=0
failed=''
killer_pid=''
remaining=$num_processes
declare -A done_pids=()
while ((remaining > 0)); do
    for i in "${!pids[@]}"; do
        pid=${pids[$i]}
        [[ -n ${done_pids[$pid]:-} ]] && continue
        kill -0 "$pid" 2>/dev/null && continue
        code=0
        wait "$pid" || code=$?
        done_pids[$pid]=1
        remaining=$((remaining - 1))
        ((code == 0 || status != 0)) && continue
        status=$code
        failed=$i
        # 143/130: stopped by SIGTERM/SIGINT with a checkpoint; the processes agreed on it, all are leaving.
        if ((signalled == 0 && code != 143 && code != 130)); then
            echo "local_multiprocess: process $i exited with status $code; stopping the others" >&2
            stop_all TERM
            (sleep "${GRACE_SECONDS:-60}" && stop_all KILL) >/dev/null 2>&1 &
            killer_pid=$!
        fi
    done
    if ((remaining > 0)); then
        sleep 0.5
    fi
done

if [[ -n $killer_pid ]]; then
    kill "$killer_pid" 2>/dev/null || true
fi
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
if ((status == 143 || status == 130)); then
    echo "local_multiprocess: stopped by a signal with a checkpoint saved; the same command resumes" >&2
elif ((status != 0)); then
    echo "local_multiprocess: failed; see $log_dir/process_$failed.log (last lines below)" >&2
    tail -n 20 "$log_dir/process_$failed.log" >&2
fi
exit "$status"
