"""`doctrain`: every pipeline step as a subcommand, so the library serves without Snakemake too.

The stage subcommands take either --config FILE (a whole experiment config) or --settings JSON
(exactly the keys the stage reads, as the workflow passes them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from doctrain.errors import UserError
from doctrain.stages import COMPUTED, PIPELINE, STAGES, Stage, stamp_path

STAMPS = {stamp_path(stage) for stage in PIPELINE if stage.stamp}


def _stage_settings(args: argparse.Namespace, stage: Stage) -> dict:
    from doctrain.config import load_config
    from doctrain.fingerprint import nest, stage_settings

    if args.settings:
        return nest(json.loads(args.settings))
    if args.config:
        return stage_settings(load_config(args.config), stage.name)
    keys = ", ".join(stage.keys)
    raise UserError(f"doctrain {stage.name}: give --config FILE or --settings JSON (keys: {keys})")


def _resume_key(stage: Stage, settings: dict, files: dict) -> str:
    """Resuming is safe only into the very same job: settings, code, software and input stamps."""
    from doctrain._io import sha256_file, sha256_text
    from doctrain.config import canonical_json
    from doctrain.fingerprint import code_json, environment_digest

    stamps = [Path(files[name]).read_text() for name, path in stage.inputs.items() if path in STAMPS]
    # A checkpoint to start from has its stamp in another experiment's results: its digest stands in.
    starts = [sha256_file(files[name]) for name in stage.inputs if stage.optional(name) and files[name]]
    return sha256_text(
        canonical_json([settings, code_json(stage.name), environment_digest(), stamps, starts])
    )


def _run_stage(args: argparse.Namespace) -> None:
    import importlib

    stage = STAGES[args.command]
    settings = _stage_settings(args, stage)
    arguments = {name: getattr(args, name) for name in [*stage.inputs, *stage.outputs, *stage.values]}
    if "lineage" in stage.computed:
        from doctrain.config import load_config
        from doctrain.fingerprint import lineage

        # The workflow passes it; from a config file it is computed the same way.
        if not (args.lineage or args.config):
            raise UserError(f"doctrain {stage.name}: --settings needs --lineage JSON (or give --config FILE)")
        arguments["lineage"] = json.loads(args.lineage) if args.lineage else lineage(load_config(args.config))
    if "resume_key" in stage.computed:
        arguments["resume_key"] = _resume_key(stage, settings, arguments)
    importlib.import_module(stage.module).run_stage(settings, **arguments)
    if "lightning" in sys.modules:  # a stage that may run as several ranks: rank 0 records
        from doctrain.distributed import is_first_rank

        if not is_first_rank():
            return
    if stage.stamp:
        from doctrain.integrity import record_origin

        record_origin(arguments[stage.stamp], stage.name, settings)


def _manifest_build(args: argparse.Namespace) -> None:
    from doctrain import manifest

    frame = manifest.build(args.root)
    out = Path(args.output)
    if out.resolve().parent != Path(args.root).resolve():
        frame["path"] = [str((Path(args.root) / p).resolve()) for p in frame["path"]]
    manifest.write(frame, out)
    print(f"{out}: {len(frame)} images, {frame['label'].nunique()} labels")


def _manifest_check(args: argparse.Namespace) -> None:
    from doctrain import manifest

    table = manifest.validate(args.manifest, args.min_classes, args.max_pixels or manifest.MAX_PIXELS)
    for split in manifest.SPLITS:
        part = table[table["split"] == split]
        print(f"{split}: {len(part)} images, {part['label'].nunique()} classes")
    print(f"{args.manifest}: OK")


def _dataset_fingerprint(args: argparse.Namespace) -> None:
    from doctrain import _io
    from doctrain.fingerprint import dataset_fingerprint

    text = dataset_fingerprint(args.manifest)
    if text is None:
        raise UserError(f"manifest {args.manifest} does not exist")
    _io.write_text_atomic(args.out, text)


def _classify(args: argparse.Namespace) -> None:
    from doctrain.classify import Classifier
    from doctrain.operating_point import describe_operating_point

    classifier = Classifier(args.model)
    classifier.register(args.register)
    threshold = classifier.threshold if args.threshold is None else args.threshold
    if args.threshold is None and classifier.operating_point:
        print(f"{args.model}: {describe_operating_point(classifier.operating_point)}", file=sys.stderr)
    for image in args.images:
        match = classifier.classify(image, threshold)
        label = match.label or f"(none: nearest {match.nearest})"
        print(f"{image}\t{label}\t{match.score:.4f}")


def _provenance(args: argparse.Namespace) -> None:
    from doctrain.onnx_model import format_record, read_metadata
    from doctrain.operating_point import describe_operating_point

    record = read_metadata(args.model)
    if not record:
        raise UserError(f"{args.model} carries no doctrain metadata")
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return
    print(format_record(record))
    if "operating_point" in record:
        print(f"in short: {describe_operating_point(record['operating_point'])}")


def _status(args: argparse.Namespace) -> int:
    from doctrain import _io, experiments, integrity

    found = experiments.find("configs")
    names = found.select(args.experiments)
    if not args.experiments:  # every experiment: those built; the others in one line
        unbuilt = [n for n in names if not Path(integrity.PUBLISHED.format(exp=n)).exists()]
        names = [n for n in names if n not in unbuilt]
        if unbuilt:
            print(f"not built (name them to check them): {', '.join(unbuilt)}")
    cache = _io.HashCache(_io.HASH_CACHE)
    stale = 0
    for name in names:
        problems = integrity.status(name, found.configs[name], cache, found.owner(name))
        stale += bool(problems)
        answer = "; ".join(problems) if problems else f"current: results/{name}.onnx is what it builds"
        elsewhere = integrity.built_elsewhere(name)
        print(f"{name}: {answer}" + (f" ({elsewhere})" if elsewhere else ""))
    cache.save()
    return 1 if stale else 0


def _compare(args: argparse.Namespace) -> None:
    from doctrain import compare, experiments
    from doctrain.config import parse_overrides

    found = experiments.find("configs", parse_overrides(args.overrides, "--overrides"))
    names = found.select(args.experiments)
    if not args.experiments:
        names = [n for n in names if Path(f"results/{n}/evaluation.json").exists()]
        if not names:
            raise UserError(
                "no experiment has been evaluated yet (results/EXP/evaluation.json); build one first"
            )
    unevaluated = [n for n in names if not Path(f"results/{n}/evaluation.json").exists()]
    if unevaluated == names:
        raise UserError(
            f"nothing to compare yet: no results/EXP/evaluation.json for {', '.join(args.experiments)}; "
            "build them first (a sweep's table: snakemake --cores N results/compare/SWEEP.md)"
        )
    chosen = {name: (found.owner(name), found.configs[name]) for name in names}
    try:
        frame, _ = compare.table(chosen, args.sort)
    except KeyError:
        columns = compare.table(chosen)[0].columns
        raise UserError(f"--sort {args.sort}: no such column (have: {', '.join(columns)})") from None
    files = (args.csv, args.md, args.html, args.roc_png)
    if any(files) and not all(files):
        raise UserError("give --csv, --md, --html and --roc-png together")
    if all(files):
        compare.write(chosen, args.title, *map(Path, files), args.sort)
    print(compare.markdown(frame), end="")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="doctrain", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    man = sub.add_parser("manifest", help="build or check a dataset manifest")
    man_sub = man.add_subparsers(dest="action", required=True)
    build = man_sub.add_parser("build", help="manifest from ROOT/<label>/* or ROOT/{train,val}/<label>/*")
    build.add_argument("root", help="folder with one sub-folder per class")
    build.add_argument("-o", "--output", required=True, help="manifest to write (.csv or .parquet)")
    build.set_defaults(func=_manifest_build)
    check = man_sub.add_parser("check", help="validate every row and list all problems")
    check.add_argument("manifest")
    check.add_argument("--min-classes", type=int, default=2, help="classes needed per split")
    check.add_argument(
        "--max-pixels",
        type=int,
        help="largest image accepted, in pixels, read from its header (default 50 MP)",
    )
    check.set_defaults(func=_manifest_check)

    for stage in PIPELINE:
        cmd = sub.add_parser(
            # argparse %-formats help texts: a stage's "95 %" would break `doctrain --help`.
            stage.name,
            help=f"{stage.help} [{stage.module}]".replace("%", "%%"),
            description=f"{stage.help} (code: {stage.module}; options show the workflow's paths)",
        )
        source = cmd.add_mutually_exclusive_group()
        source.add_argument("--config", help="experiment config (configs/NAME.yaml)")
        source.add_argument("--settings", help="JSON of the stage's dotted keys (what the workflow passes)")
        for name, path in {**stage.inputs, **stage.outputs, **stage.values}.items():
            optional = stage.optional(name)
            cmd.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                required=not optional,
                metavar="results/EXP/model.ckpt" if optional else path,
                help="the checkpoint to start from (model.init_from)" if optional else None,
            )
        if "lineage" in stage.computed:
            cmd.add_argument("--lineage", help=COMPUTED["lineage"] + " (default: from --config)")
        cmd.set_defaults(func=_run_stage)

    fpr = sub.add_parser("dataset-fingerprint", help="digest of a manifest and every file it lists")
    fpr.add_argument("--manifest", required=True)
    fpr.add_argument("--out", required=True)
    fpr.set_defaults(func=_dataset_fingerprint)

    cls = sub.add_parser("classify", help="match images to registered templates with an exported model")
    cls.add_argument("model", help="exported .onnx file")
    cls.add_argument(
        "--register",
        required=True,
        help="folder of templates: an image per class (the class is its file name), or a sub-folder per "
        "class (every image in it a template of that class; the best-scoring one decides)",
    )
    cls.add_argument(
        "--threshold",
        type=float,
        help="score (cos+1)/2 a match must exceed (default: the model's operating threshold, "
        "measured at the config's operating_point.fpr; 0.7 for a model without one)",
    )
    cls.add_argument("images", nargs="+", help="images to classify")
    cls.set_defaults(func=_classify)

    status = sub.add_parser(
        "status",
        help="is results/EXP.onnx what the current config, code and data build? (exit 1 when not)",
    )
    status.add_argument(
        "experiments",
        nargs="*",
        metavar="EXP",
        help="experiments or sweeps (default: every experiment built so far; the others are listed)",
    )
    status.set_defaults(func=_status)

    cmp = sub.add_parser(
        "compare",
        help="one table of experiments: the settings that differ, AUROC, TPR and threshold at each FPR, "
        "baseline, training time, parity",
        description="Print a table of experiments from their results: the settings each was built with "
        "that differ between them, then its figures. Rows of experiments not built yet say so.",
    )
    cmp.add_argument(
        "experiments",
        nargs="*",
        metavar="EXP",
        help="experiments or sweeps (configs/sweeps/NAME.yaml) (default: every evaluated experiment)",
    )
    cmp.add_argument(
        "--sort", metavar="COLUMN", help="sort by a column: figures best first, names and settings ascending"
    )
    cmp.add_argument("--overrides", default="", help="as the workflow's --config overrides=...")
    files = cmp.add_argument_group("files to write besides printing (all four or none)")
    files.add_argument("--csv")
    files.add_argument("--md")
    files.add_argument("--html")
    files.add_argument("--roc-png")
    cmp.add_argument("--title", default="experiments", help="heading of the .md and the figure")
    cmp.set_defaults(func=_compare)

    prov = sub.add_parser("provenance", help="print what an exported ONNX file was built from")
    prov.add_argument("model")
    prov.add_argument("--json", action="store_true", help="print JSON instead of text")
    prov.set_defaults(func=_provenance)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"doctrain: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
