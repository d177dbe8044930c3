# doctrain: dataset manifest -> validated data -> image cache -> checkpoint -> ONNX -> parity-verified ONNX.
# Targets: results/{exp}.onnx (the verified model) and results/{exp}/evaluation.json (its metrics)
# for every configs/{exp}.yaml. Default target: the demo's.
from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


include: "rules/common.smk"


# Every step runs in the training image when Snakemake is asked to (--sdm apptainer).
container: CONTAINER_IMAGE


include: "rules/data.smk"
include: "rules/stages.smk"


rule all:
    default_target: True
    input:
        "results/demo.onnx",
        "results/demo/evaluation.json",
