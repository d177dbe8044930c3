#!/usr/bin/env bash
# The Docker route: run any command in the training image, as you, with this checkout mounted.
#
#   containers/run.sh snakemake --cores 32 results/lcnet050_cosface_96.onnx
#   DATA_DIR=/data/documents containers/run.sh snakemake --cores 32 results/my_experiment.onnx
#
# Files the command writes belong to you (the image's entrypoint drops to USER_ID:GROUP_ID).
# Settings, from the environment:
#   DOCKER     docker (default) or podman
#   IMAGE      the image to run (default: doctrain:VERSION, VERSION from containers/version.sh)
#   DATA_DIR   a data folder to mount at the same path, for manifests that name files there
#   GPUS       what --gpus gets (default: all; empty: no GPU flag, for machines without one)
#   SHM_SIZE   shared memory for the loader workers' batches (default: 8g)
#   USER_ID, GROUP_ID   whom to run as (default: you)
set -euo pipefail

checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
docker=${DOCKER:-docker}
image=${IMAGE:-doctrain:$(sh "$checkout/containers/version.sh")}
gpus=${GPUS-all}
shm_size=${SHM_SIZE:-8g}

# Loader workers hand batches over through shared memory, and a container's own /dev/shm is 64 MB:
# the recipe's 16 workers keep about 1 GB of batches in flight. --shm-size gives the container room
# of its own, without joining the host's IPC namespace as --ipc=host would.
args=(run --rm --shm-size="$shm_size"
    -e USER_ID="${USER_ID:-$(id -u)}" -e GROUP_ID="${GROUP_ID:-$(id -g)}"
    -v "$checkout:$checkout" -w "$checkout")
if [[ -n $gpus && $(basename "$docker") == podman ]]; then
    args+=(--device "nvidia.com/gpu=$gpus") # podman reaches GPUs through CDI (nvidia-ctk cdi generate)
elif [[ -n $gpus ]]; then
    args+=(--gpus "$gpus")
fi
if [[ -n ${DATA_DIR:-} ]]; then
    [[ -d $DATA_DIR ]] || { echo "containers/run.sh: DATA_DIR $DATA_DIR is not a folder" >&2; exit 2; }
    data=$(cd "$DATA_DIR" && pwd)
    args+=(-v "$data:$data")
fi
if [[ -t 0 && -t 1 ]]; then
    args+=(-it)
fi
exec "$docker" "${args[@]}" "$image" "$@"
