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
        "{DOCTRAIN} synth --settings {params.settings:q} --manifest {output.manifest} 2>&1 | tee {log}"


rule dataset_fingerprint:
    input:
        manifest=fingerprinted_manifest,
    output:
        "results/{exp}/dataset.fingerprint.json",
    log:
        "results/{exp}/logs/dataset_fingerprint.log",
    shell:
        "{DOCTRAIN} dataset-fingerprint --manifest {input.manifest} --out {output} 2>&1 | tee {log}"


rule validate:
    input:
        manifest=ancient(manifest),
        fingerprint="results/{exp}/dataset.fingerprint.json",
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
        "{DOCTRAIN} validate --settings {params.settings:q} --manifest {input.manifest}"
        " --validated {output.validated} --report {output.report} 2>&1 | tee {log}"


rule prepare:
    input:
        validated=ancient("results/{exp}/data/validated.parquet"),
        report="results/{exp}/data/validation.json",
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
        "{DOCTRAIN} prepare --settings {params.settings:q} --validated {input.validated}"
        " --cache-dir results/{wildcards.exp}/cache 2>&1 | tee {log}"
