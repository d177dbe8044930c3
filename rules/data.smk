# The data's own rules: render the demo data (when configured), and digest the manifest and every
# file it lists. The stages after them are in rules/stages.smk.


rule synth:
    output:
        manifest="data/synth/{dataset}/manifest.csv",
    log:
        "data/synth/{dataset}.log",
    params:
        **stage_params(STAGES["synth"], synth_settings),
    shell:
        STAGE_SHELL


rule dataset_fingerprint:
    input:
        manifest=fingerprinted_manifest,
        chain=lambda w: force_if_broken("dataset_fingerprint", w.exp) or force_if_data_changed(w.exp) or [],
    output:
        "results/{exp}/dataset.fingerprint.json",
    log:
        "results/{exp}/logs/dataset_fingerprint.log",
    shell:
        "python -m doctrain dataset-fingerprint --manifest {input.manifest:q} --out {output:q} 2>&1 | tee {log:q}"
