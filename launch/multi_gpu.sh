#!/usr/bin/env bash
# Training on every GPU of this node from one process: the train step is pmapped over all local devices and
# the global batch (--config.batch_size) is split evenly among them.
#
#   launch/multi_gpu.sh CONFIG WORKDIR [MORE ARGS...]
#   launch/multi_gpu.sh configs/two_layer.py runs/two_layer
#   GPUS=0,1 launch/multi_gpu.sh configs/two_layer.py runs/two_layer --config.batch_size=8
#
# MORE ARGS go to `python -m convlstm_jax.main` as they are. The output is shown here and appended to
# WORKDIR/logs/train-<date>.log. Rerunning the same command resumes from the workdir's latest checkpoint.
# SIGTERM/SIGINT is passed on to the training process, which finishes its step, saves and exits.
#
# Environment:
#   GPUS                              GPUs to use, e.g. 0,1 (default: every GPU CUDA_VISIBLE_DEVICES allows)
#   XLA_PYTHON_CLIENT_MEM_FRACTION    share of each GPU's memory JAX takes up front (default here 0.90;
#                                     JAX's own default is 0.75; TensorFlow only feeds data, on the CPU)
#   XLA_PYTHON_CLIENT_PREALLOCATE     false: allocate on demand instead (slower; for shared GPUs)
#   XLA_FLAGS                         extra XLA flags, added after the ones set here
#   ALLOW_CPU                         1: train on the CPU when no GPU is visible (default: stop, saying so)
#   PYTHON                            interpreter (default: python3)
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 CONFIG WORKDIR [MORE ARGS for python -m convlstm_jax.main]" >&2
    exit 2
fi
config=$1
workdir=$2
shift 2
python=${PYTHON:-python3}

if [[ -n ${GPUS:-} ]]; then
    export CUDA_VISIBLE_DEVICES=$GPUS
fi

# A GPU this process may use: CUDA_VISIBLE_DEVICES not emptied, and nvidia-smi or a device file shows one.
gpu_visible() {
    if [[ -v CUDA_VISIBLE_DEVICES && ( -z ${CUDA_VISIBLE_DEVICES// /} || $CUDA_VISIBLE_DEVICES == -1 ) ]]; then
        return 1
    fi
    # grep reads all of the listing: with -q it could stop early and, under pipefail, fail nvidia-smi (SIGPIPE).
    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep '^GPU ' >/dev/null; then
        return 0
    fi
    compgen -G '/dev/nvidia[0-9]*' >/dev/null || [[ -e /dev/kfd ]]
}
if [[ ${ALLOW_CPU:-0} != 1 ]] && ! gpu_visible; then
    echo "multi_gpu: no GPU visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}, no GPU from nvidia-smi or" \
        "/dev/nvidia*), so JAX would train on the CPU; set ALLOW_CPU=1 to do that anyway" >&2
    exit 1
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
# The latency-hiding scheduler overlaps the gradient all-reduce with the backward pass.
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# One process: never wait for other processes, even inside a SLURM or mpirun allocation.
export CONVLSTM_DISTRIBUTED=off

mkdir -p "$workdir/logs"
log=$workdir/logs/train-$(date +%Y%m%d-%H%M%S).log
echo "multi_gpu: GPUs ${CUDA_VISIBLE_DEVICES:-all}, log $log" | tee -a "$log" >&2
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader >>"$log" 2>&1 || true
fi

"$python" -u -m convlstm_jax.main --config "$config" --workdir "$workdir" "$@" > >(tee -a "$log") 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM INT

# `wait` returns early when a trapped signal arrives: wait again until the process has really exited.
status=0
wait "$pid" || status=$?
while kill -0 "$pid" 2>/dev/null; do
    status=0
    wait "$pid" || status=$?
done
echo "multi_gpu: exit status $status" | tee -a "$log" >&2
exit "$status"
