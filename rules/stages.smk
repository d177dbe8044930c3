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
        threads: stage_threads(stage)
        resources:
            **stage_resources(stage),
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


rule sweep_error:
    input:
        config_error,
    output:
        "results/compare/{broken_sweep}.md",


# One table (and one ROC figure) comparing a group of experiments: a sweep's, or `all` of them.
rule compare:
    input:
        compared_results,
    output:
        csv="results/compare/{group}.csv",
        md="results/compare/{group}.md",
        html=report_output(
            "results/compare/{group}.html", caption="../report/compare.rst", category="compare"
        ),
        roc_png=report_output(
            "results/compare/{group}_roc.png", caption="../report/compare_roc.rst", category="compare"
        ),
    log:
        "results/compare/logs/{group}.log",
    params:
        experiments=lambda w: " ".join(shlex.quote(e) for e in group_members(w.group)),
        overrides=OVERRIDES_TEXT,
        code=canonical_json(fingerprint.module_digests("doctrain.compare", hashes())),
    shell:
        "python -m doctrain compare {params.experiments} --overrides={params.overrides:q}"
        " --title {wildcards.group:q} --csv {output.csv:q} --md {output.md:q} --html {output.html:q}"
        " --roc-png {output.roc_png:q} > {log:q} 2>&1"
