# doctrain: dataset manifest -> validated data -> image cache -> checkpoint -> ONNX -> parity-verified ONNX.
# Targets: results/{exp}.onnx (the verified model) and results/{exp}/evaluation.json (its metrics)
# for every configs/{exp}.yaml and every experiment of a sweep (configs/sweeps/NAME.yaml), and
# results/compare/{NAME or all}.md, the table comparing a sweep's experiments or all of them.
# Default target: the demo's; `all`: every experiment.
from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


include: "rules/common.smk"


# Every step runs in the training image when Snakemake is asked to (--sdm apptainer).
container: CONTAINER_IMAGE


include: "rules/data.smk"
include: "rules/stages.smk"


rule demo:
    default_target: True
    input:
        "results/demo.onnx",
        "results/demo/evaluation.json",


# Every experiment: each config's and each sweep's, and the table comparing them.
rule all:
    input:
        expand("results/{exp}.onnx", exp=sorted(EXPERIMENTS)),
        expand("results/{exp}/evaluation.json", exp=sorted(EXPERIMENTS)),
        "results/compare/all.md",
