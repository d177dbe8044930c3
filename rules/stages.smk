# One rule per stage of doctrain.stages.PIPELINE, each made from the stage's declaration: its files
# (the inputs a stage consumes come with the stamp that vouches for them, doctrain.integrity), its
# params (the settings, code and environment it is fingerprinted by) and its shell line.


for stage in EXPERIMENT_STAGES:

    rule:
        name:
            stage.name
        input:
            unpack(stage_inputs(stage)),
        output:
            **stage_outputs(stage),
        log:
            f"results/{{exp}}/logs/{stage.name}.log",
        benchmark:
            f"results/{{exp}}/benchmarks/{stage.name}.tsv"
        threads: SCHEDULING.get(stage.name, {}).get("threads", 1)
        resources:
            **SCHEDULING.get(stage.name, {}).get("resources", {}),
        params:
            **stage_params(stage),
        shell:
            STAGE_SHELL


# What a broken or badly named configs/NAME.yaml would build: the run stops here, naming every
# broken config, while the targets of the other experiments build.
rule config_error:
    input:
        config_error,
    output:
        "results/{broken}.onnx",
