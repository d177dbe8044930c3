# doctrain: dataset manifest -> validated data -> image cache -> checkpoint -> ONNX -> parity-verified ONNX.
# Targets: results/{exp}.onnx for every configs/{exp}.yaml. Default target: the demo.
from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


include: "rules/common.smk"


# Every step runs in the training image when Snakemake is asked to (--sdm apptainer).
container: CONTAINER_IMAGE


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/export.smk"


rule all:
    default_target: True
    input:
        "results/demo.onnx",
