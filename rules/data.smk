# Data stages: render the demo data (when configured), fingerprint and validate the manifest,
# and build the image cache. Large outputs go downstream as ancient() inputs beside a small stamp.


rule synth:
    output:
        manifest="data/synth/{dataset}/manifest.csv",
    log:
        "data/synth/{dataset}.log",
    params:
        settings=synth_settings,
        code=code("synth"),
        env=ENVIRONMENT,
    shell:
        "python -m doctrain synth --settings {params.settings:q} --manifest {output.manifest:q} 2>&1 | tee {log:q}"


rule dataset_fingerprint:
    input:
        manifest=fingerprinted_manifest,
        chain=integrity_check("dataset_fingerprint"),
    output:
        "results/{exp}/dataset.fingerprint.json",
    log:
        "results/{exp}/logs/dataset_fingerprint.log",
    shell:
        "python -m doctrain dataset-fingerprint --manifest {input.manifest:q} --out {output:q} 2>&1 | tee {log:q}"


rule validate:
    input:
        manifest=ancient(manifest),
        fingerprint="results/{exp}/dataset.fingerprint.json",
        chain=integrity_check("validate"),
    output:
        validated="results/{exp}/data/validated.parquet",
        report="results/{exp}/data/validation.json",
    log:
        "results/{exp}/logs/validate.log",
    params:
        settings=settings("validate"),
        code=code("validate"),
        env=ENVIRONMENT,
    threads: 2
    shell:
        "python -m doctrain validate --settings {params.settings:q} --manifest {input.manifest:q}"
        " --validated {output.validated:q} --report {output.report:q} 2>&1 | tee {log:q}"


rule prepare:
    input:
        validated=ancient("results/{exp}/data/validated.parquet"),
        report="results/{exp}/data/validation.json",
        chain=integrity_check("prepare"),
    output:
        images="results/{exp}/cache/images.npy",
        index="results/{exp}/cache/index.parquet",
        summary="results/{exp}/cache/summary.json",
    log:
        "results/{exp}/logs/prepare.log",
    params:
        settings=settings("prepare"),
        code=code("prepare"),
        env=ENVIRONMENT,
    shell:
        "python -m doctrain prepare --settings {params.settings:q} --validated {input.validated:q}"
        " --cache-dir results/{wildcards.exp:q}/cache 2>&1 | tee {log:q}"
