import pytest
import yaml

from doctrain.config import load_config, validate_config
from doctrain.errors import UserError
from tests.conftest import ROOT


def test_defaults_fill_every_section():
    config = validate_config({})
    assert config["optimizer"]["lr"] == 1e-3
    assert config["onnx"]["dynamic_axes"] == {"img": {"0": "batch_size"}, "feats": {"0": "batch_size"}}
    assert config["parity"]["max_abs_diff"] == 1e-5


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(UserError, match=r"optimizer: Additional properties are not allowed \('lrr'"):
        validate_config({"optimizer": {"lrr": 0.1}})


def test_wrong_type_is_named_with_its_path():
    # PyYAML reads 1e-3 (no dot) as a string: the schema must catch it.
    with pytest.raises(
        UserError,
        match=r"optimizer\.lr: '6e-3' is not of type 'number' \(YAML reads 6e-3 as text; write 6.0e-3\)",
    ):
        validate_config(yaml.safe_load("optimizer: {lr: 6e-3}"))


def test_onnx_shape_must_match_image_size():
    with pytest.raises(UserError, match="does not match data.image_size 64"):
        validate_config({"data": {"image_size": 64}})


def test_dynamic_axis_must_name_a_tensor():
    # The reference config keyed the output's dynamic axis 'output' while the output is 'feats'.
    with pytest.raises(UserError, match="onnx.dynamic_axes.output names no input or output"):
        validate_config({"onnx": {"dynamic_axes": {"img": {0: "b"}, "output": {0: "b"}}}})


def test_every_shipped_config_is_valid():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_reference_config_is_the_recipe():
    c = load_config(ROOT / "configs" / "lcnet050_cosface_96.yaml")
    assert c["model"] | {} == {
        "backbone": "lcnet_050",
        "pretrained": False,
        "weights": None,
        "init_from": None,
        "replace_components": True,
        "embed_dim": 128,
        "channels_last": False,
    }
    assert c["loss"] == {"name": "cosface", "s": 64.0, "m": 0.4}
    assert c["optimizer"] == {"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.1}
    assert c["schedule"] == {"epochs": 20, "warmup_fraction": 0.1, "power": 1.0}
    assert (c["data"]["batch_size"], c["data"]["samples_per_epoch"], c["data"]["image_size"]) == (
        256,
        256000,
        96,
    )
    # Speed settings, not the recipe's values: measured on an H200 (docs/performance.md).
    assert (c["data"]["loader"]["num_workers"], c["trainer"]["compile"]) == (8, "reduce-overhead")
    assert c["trainer"]["gradient_clip_val"] == 5.0 and c["trainer"]["precision"] == "32"
    assert c["onnx"]["input_shape"] == {"img": {"shape": [1, 3, 96, 96], "dtype": "float32"}}
    assert (c["onnx"]["input_names"], c["onnx"]["output_names"]) == (["img"], ["feats"])
    assert c["onnx"]["options"] == {"opset_version": 16, "verbose": False, "do_constant_folding": True}
    arcface = load_config(ROOT / "configs" / "lcnet050_arcface_96.yaml")
    assert arcface["loss"] == {"name": "arcface", "s": 64.0, "m": 0.4}
    assert {k: v for k, v in arcface.items() if k != "loss"} == {k: v for k, v in c.items() if k != "loss"}


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_non_finite_numbers_are_refused_with_their_path():
    raw = yaml.safe_load("optimizer: {lr: .nan, betas: [0.9, .inf]}")
    expected = r"optimizer\.lr: nan is not a finite number.*optimizer\.betas\.1: inf"
    with pytest.raises(UserError, match=expected):
        validate_config(raw)


def test_an_epoch_must_hold_at_least_one_batch():
    with pytest.raises(UserError, match=r"data\.samples_per_epoch \(100\) must be at least data\.batch_size"):
        validate_config({"data": {"samples_per_epoch": 100, "batch_size": 256}})


def test_experiment_names_are_restricted_and_broken_configs_listed_together(tmp_path):
    from doctrain import experiments

    good = (ROOT / "configs" / "smoke.yaml").read_text()
    for name in ("ok", "e;touch PWNED;f", "p(q", "with space", ".hidden"):
        (tmp_path / f"{name}.yaml").write_text(good)
    (tmp_path / "nan.yaml").write_text("optimizer: {lr: .nan}\n")
    found = experiments.find(tmp_path)
    assert list(found.configs) == ["ok"]
    assert set(found.broken) == {"e;touch PWNED;f", "p(q", "with space", ".hidden", "nan"}
    message = found.broken_message()
    assert message.startswith("5 experiment config(s) or sweep(s) cannot be used")
    assert "the experiment name 'p(q' may only hold letters" in message and "lr: nan" in message


def test_a_gpu_recipe_on_a_cpu_warns_with_an_estimate_and_the_demo_does_not(capsys):
    import torch

    from doctrain.training import _warn_if_long_on_a_cpu

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name, warned in (("lcnet050_cosface_96", True), ("demo", False)):
            config = load_config(ROOT / "configs" / f"{name}.yaml")
            samples = config["schedule"]["epochs"] * config["data"]["samples_per_epoch"]
            _warn_if_long_on_a_cpu(samples, config["data"]["image_size"])
            said = capsys.readouterr().out
            assert ("takes roughly 9.5 hours" in said and "meant for a GPU" in said) == warned, said
    finally:
        torch.set_num_threads(threads)


def test_experiments_found_once_are_remembered_until_what_they_are_read_from_changes(tmp_path, monkeypatch):
    """Issue 25, item 5: every plan validated every config and sweep point again (~0.15 s for a
    100-point sweep); a cache remembers what was found, and any edit is seen."""
    from doctrain import _io, experiments

    configs = tmp_path / "configs"
    (configs / "sweeps").mkdir(parents=True)
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    (configs / "base.yaml").write_text(yaml.safe_dump(smoke))
    (configs / "sweeps" / "rates.yaml").write_text("base: base\ngrid: {optimizer.lr: [0.001, 0.002]}\n")
    cache = _io.HashCache(tmp_path / "cache.json")
    first = experiments.find(configs, {"schedule.epochs": 3}, cache)
    assert first == experiments.find(configs, {"schedule.epochs": 3})
    assert len(first.configs) == 3 and first.configs["rates.lr-0.002"]["optimizer"]["lr"] == 0.002
    cache.save()

    validated = []
    real_validate = experiments.validate_config
    monkeypatch.setattr(experiments, "validate_config", lambda *a: validated.append(a) or real_validate(*a))
    again = _io.HashCache(tmp_path / "cache.json")
    assert experiments.find(configs, {"schedule.epochs": 3}, again) == first and validated == []

    for edit in (
        lambda: (configs / "base.yaml").write_text(yaml.safe_dump({**smoke, "optimizer": {"lr": 0.005}})),
        lambda: (configs / "sweeps" / "rates.yaml").write_text("base: base\ngrid: {optimizer.lr: [0.003]}\n"),
        lambda: (configs / "broken.yaml").write_text("optimizer: {lr: -1}\n"),
    ):
        edit()
        assert experiments.find(configs, {"schedule.epochs": 3}, again) == experiments.find(
            configs, {"schedule.epochs": 3}
        )
    assert set(again.latest) == {"experiments"} and "broken" in experiments.find(configs, {}, again).broken
    assert experiments.find(configs, {"schedule.epochs": 4}, again).configs["base"]["schedule"]["epochs"] == 4
