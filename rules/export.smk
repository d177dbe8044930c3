# Export and verification are separate stages, and verification always runs: results/{exp}.onnx
# is published by the verify job only, after every parity and contract check passed.


rule export:
    input:
        checkpoint=ancient("results/{exp}/model.ckpt"),
        train_stamp="results/{exp}/model.stamp.json",
        validation="results/{exp}/data/validation.json",
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
        "{DOCTRAIN} export --settings {params.settings:q} --checkpoint {input.checkpoint}"
        " --train-stamp {input.train_stamp} --validation-report {input.validation}"
        " --out {output.onnx} --stamp {output.stamp} --name {wildcards.exp}"
        " --lineage {params.lineage:q} 2>&1 | tee {log}"


rule verify:
    input:
        checkpoint=ancient("results/{exp}/model.ckpt"),
        train_stamp="results/{exp}/model.stamp.json",
        onnx=ancient("results/{exp}/model.unverified.onnx"),
        onnx_stamp="results/{exp}/model.unverified.stamp.json",
        images=ancient("results/{exp}/cache/images.npy"),
        index=ancient("results/{exp}/cache/index.parquet"),
        summary="results/{exp}/cache/summary.json",
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
        "{DOCTRAIN} verify --settings {params.settings:q} --checkpoint {input.checkpoint}"
        " --onnx-path {input.onnx} --cache-dir results/{wildcards.exp}/cache"
        " --report-path {output.report} --provenance-path {output.provenance}"
        " --published {output.onnx} 2>&1 | tee {log}"
