#!/bin/sh
# The image version: a digest of everything that goes into the image. Snakemake compares image
# names, not their contents, so a changed recipe must be a new name for the steps to rerun.
cd "$(dirname "$0")/.." &&
    cat envs/requirements.txt containers/Dockerfile containers/doctrain.def containers/entrypoint.sh |
    sha256sum | cut -c1-12
