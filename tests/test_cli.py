import shutil

import pytest
import torch

from doctrain import export
from doctrain.cli import main
from doctrain.config import validate_config
from doctrain.fingerprint import stage_settings
from doctrain.lit_module import EmbeddingModule
from tests.conftest import ROOT, write_png


def test_manifest_build_then_check(image_tree, capsys):
    assert main(["manifest", "build", str(image_tree), "-o", str(image_tree / "m.csv")]) == 0
    assert main(["manifest", "check", str(image_tree / "m.csv")]) == 0
    out = capsys.readouterr().out
    assert "10 images, 5 labels" in out and "train: 6 images, 3 classes" in out


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["manifest", "check", str(tmp_path / "absent.csv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("doctrain: error: manifest ") and "Traceback" not in err


def test_stage_without_settings_names_the_keys_it_needs(capsys):
    args = [
        "export",
        "--checkpoint",
        "c",
        "--train-stamp",
        "s",
        "--metrics",
        "m",
        "--validation-report",
        "r",
        "--cache",
        "k",
        "--out",
        "o",
        "--stamp",
        "t",
        "--name",
        "n",
        "--lineage",
        "{}",
    ]
    assert main(args) == 1
    assert "give --config FILE or --settings JSON (keys: onnx, operating_point)" in capsys.readouterr().err


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    config = validate_config({"model": {"embed_dim": 16}})
    module = EmbeddingModule.from_settings(config, num_classes=3, steps_per_epoch=1).eval()
    settings = stage_settings(config, "export")
    path = tmp_path / "model.onnx"
    export.export(settings, module, path, export.contract_metadata(settings, 16, "unit"))
    return path


def test_classify_registers_templates_and_matches(exported, tmp_path, capsys):
    templates = tmp_path / "templates"
    for n, name in enumerate(("passport", "licence", "invoice")):
        write_png(templates / f"{name}.png", seed=n, size=(96, 128))
    shutil.copy(templates / "licence.png", tmp_path / "query.png")
    assert main(["classify", str(exported), "--register", str(templates), str(tmp_path / "query.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split("\t")[1] == "licence" and float(line.split("\t")[2]) == pytest.approx(1.0, abs=1e-5)
    assert (
        main(
            [
                "classify",
                str(exported),
                "--register",
                str(templates),
                "--threshold",
                "1.0",
                str(tmp_path / "query.png"),
            ]
        )
        == 0
    )
    # Strict, as the package: a score must exceed it. The nearest template is still named.
    assert capsys.readouterr().out.strip().split("\t")[1] == "(none: nearest licence)"


def test_provenance_prints_the_contract(exported, capsys):
    assert main(["provenance", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "channel_order: BGR" in out and "embedding_dim: 16" in out
    # JSON's words, not Python's: what a reader (or a YAML parser) expects.
    assert "l2_normalised: true" in out and "mean: null" in out and "True" not in out and "None" not in out


def test_help_runs_for_doctrain_and_every_subcommand(capsys):
    from doctrain.cli import parser

    commands = [[]] + [[name] for name in parser()._subparsers._group_actions[0].choices]
    commands += [["manifest", "build"], ["manifest", "check"]]
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0, command
        assert "usage: doctrain" in capsys.readouterr().out


def test_compare_before_anything_is_evaluated_says_what_to_build(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "smoke-grid", "--sort", "auroc"]) == 1
    said = capsys.readouterr().err
    assert "nothing to compare yet: no results/EXP/evaluation.json for smoke-grid; build them first" in said
