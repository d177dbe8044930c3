# Training: the cache in, the checkpoint selected by validation AUROC out. Lightning's own
# checkpoints and logs stay in results/{exp}/work/, outside the declared outputs.


rule train:
    input:
        images=ancient("results/{exp}/cache/images.npy"),
        index=ancient("results/{exp}/cache/index.parquet"),
        summary="results/{exp}/cache/summary.json",
        chain=integrity_check("train"),
    output:
        checkpoint="results/{exp}/model.ckpt",
        stamp="results/{exp}/model.stamp.json",
        metrics=report(
            "results/{exp}/metrics.json", caption="../report/metrics.rst", category="{exp}"
        ),
        log_csv="results/{exp}/train_log.csv",
        roc=report("results/{exp}/roc.png", caption="../report/roc.rst", category="{exp}"),
        curves=report(
            "results/{exp}/training_curves.png", caption="../report/training_curves.rst", category="{exp}"
        ),
    log:
        "results/{exp}/logs/train.log",
    benchmark:
        "results/{exp}/benchmarks/train.tsv"
    params:
        settings=settings("train"),
        code=code("train"),
        env=ENVIRONMENT,
    threads: 2
    resources:
        gpu=1,
        cpus_per_gpu=train_cpus,
        mem_mb=train_mem_mb,
    shell:
        "OMP_NUM_THREADS={threads} python -m doctrain train --settings {params.settings:q}"
        " --cache-dir results/{wildcards.exp:q}/cache --work-dir results/{wildcards.exp:q}/work/train"
        " --checkpoint {output.checkpoint:q} --stamp {output.stamp:q} --metrics {output.metrics:q}"
        " --log-csv {output.log_csv:q} --roc-png {output.roc:q} --curves-png {output.curves:q}"
        " --name {wildcards.exp:q} 2>&1 | tee {log:q}"
