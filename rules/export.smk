# Export and verification are separate stages, and verification always runs: results/{exp}.onnx
# is published by the verify job only, after every parity and contract check passed.


rule export:
    input:
        checkpoint=ancient("results/{exp}/model.ckpt"),
        train_stamp="results/{exp}/model.stamp.json",
        metrics="results/{exp}/metrics.json",
        validation="results/{exp}/data/validation.json",
        chain=integrity_check("export"),
    output:
        onnx="results/{exp}/model.unverified.onnx",
        stamp="results/{exp}/model.unverified.stamp.json",
    log:
        "results/{exp}/logs/export.log",
    benchmark:
        "results/{exp}/benchmarks/export.tsv"
    params:
        settings=settings("export"),
        code=code("export"),
        env=ENVIRONMENT,
        lineage=lambda w: canonical_json(fingerprint.lineage(EXPERIMENTS[w.exp])),
    shell:
        "python -m doctrain export --settings {params.settings:q} --checkpoint {input.checkpoint:q}"
        " --train-stamp {input.train_stamp:q} --metrics {input.metrics:q}"
        " --validation-report {input.validation:q}"
        " --out {output.onnx:q} --stamp {output.stamp:q} --name {wildcards.exp:q}"
        " --lineage {params.lineage:q} 2>&1 | tee {log:q}"


rule verify:
    input:
        checkpoint=ancient("results/{exp}/model.ckpt"),
        train_stamp="results/{exp}/model.stamp.json",
        onnx=ancient("results/{exp}/model.unverified.onnx"),
        onnx_stamp="results/{exp}/model.unverified.stamp.json",
        images=ancient("results/{exp}/cache/images.npy"),
        index=ancient("results/{exp}/cache/index.parquet"),
        summary="results/{exp}/cache/summary.json",
        chain=integrity_check("verify"),
    output:
        report=report("results/{exp}/parity.json", caption="../report/parity.rst", category="{exp}"),
        provenance="results/{exp}/provenance.json",
        onnx="results/{exp}.onnx",
    log:
        "results/{exp}/logs/verify.log",
    params:
        settings=settings("verify"),
        code=code("verify"),
        env=ENVIRONMENT,
    shell:
        "python -m doctrain verify --settings {params.settings:q} --checkpoint {input.checkpoint:q}"
        " --onnx-path {input.onnx:q} --cache-dir results/{wildcards.exp:q}/cache"
        " --report-path {output.report:q} --provenance-path {output.provenance:q}"
        " --published {output.onnx:q} 2>&1 | tee {log:q}"


# What a broken or badly named configs/NAME.yaml would build: the run stops here, naming every
# broken config, while the targets of the other experiments build.
rule config_error:
    input:
        config_error,
    output:
        "results/{broken}.onnx",
