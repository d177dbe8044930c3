import json

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from torch import nn

from doctrain import _io, cache, evaluation, export, onnx_model, parity, synth
from doctrain.config import validate_config
from doctrain.errors import UserError
from doctrain.fingerprint import stage_settings
from doctrain.lit_module import EmbeddingModule
from doctrain.manifest import validate
from doctrain.model import EmbeddingNet, load_trained
from doctrain.operating_point import SELECTION_PAIRS
from doctrain.training import save_checkpoint

SIZE = 64


@pytest.fixture(scope="module")
def config():
    return validate_config(
        {
            "data": {"image_size": SIZE},
            "model": {"embed_dim": 16},
            "onnx": {"input_shape": {"img": {"shape": [1, 3, SIZE, SIZE], "dtype": "float32"}}},
            "parity": {"val_images": 6, "random_inputs": 3, "batch_size": 3},
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, config):
    """A checkpoint of an untrained module (parity does not care about training) and a cache."""
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    module = EmbeddingModule.from_settings(config, num_classes=5, steps_per_epoch=1)
    save_checkpoint(module, root / "model.ckpt", {"epoch": 0})
    settings = {
        "seed": 1,
        "train_templates": 2,
        "instances_per_train_template": 1,
        "val_templates": 4,  # 2 select, 2 calibrate
        "photos_per_val_template": 2,
        "test_templates": 2,
        "width": 96,
    }
    synth.render_dataset(root / "data", settings).to_csv(root / "data" / "manifest.csv", index=False)
    validate(root / "data" / "manifest.csv").to_parquet(root / "validated.parquet")
    cache.run_stage(
        stage_settings(config, "prepare"),
        root / "validated.parquet",
        root / "cache" / "images.npy",
        root / "cache" / "index.parquet",
        root / "cache" / "summary.json",
    )
    return root


def test_embeddings_are_unit_rows_and_hardswish_is_gone():
    net = EmbeddingNet("lcnet_050", embed_dim=24).eval()
    assert not any(isinstance(m, nn.Hardswish) for m in net.modules())
    assert EmbeddingNet("lcnet_050", 24, replace_components=False).backbone is not None
    feats = net(torch.rand(3, 3, 96, 96))
    assert feats.shape == (3, 24)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))


def test_optimizer_exempts_only_biases_from_decay():
    config = validate_config({"model": {"embed_dim": 8}, "optimizer": {"weight_decay": 0.1}})
    module = EmbeddingModule.from_settings(config, num_classes=3, steps_per_epoch=1)
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    names = {id(p): n for n, p in module.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(".bias") for p in no_decay["params"])
    assert "margin.weight" in {names[id(p)] for p in decay["params"]}


def test_checkpoint_rebuilds_its_model_strictly(trained):
    net = load_trained(trained / "model.ckpt")
    assert net.embed_dim == 16 and not net.training
    assert net.backbone.feature_info.channels() == [256]  # lcnet_050's last stage
    payload = torch.load(trained / "model.ckpt", weights_only=False)
    del payload["state_dict"]["net.head.1.weight"]
    torch.save(payload, trained / "broken.ckpt")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_trained(trained / "broken.ckpt")


def export_to(path, trained, config, extra: dict | None = None):
    net = load_trained(trained / "model.ckpt")
    meta = export.contract_metadata(stage_settings(config, "export"), 16, "unit") | (extra or {})
    export.export(stage_settings(config, "export"), net, path, meta)
    return path


def test_export_meets_the_consumer_contract(tmp_path, trained, config):
    path = export_to(tmp_path / "m.onnx", trained, config)
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 16
    assert [i.name for i in model.graph.input] == ["img"] and [o.name for o in model.graph.output] == [
        "feats"
    ]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch_size"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch_size"
    meta = onnx_model.read_metadata(path)
    assert meta["preprocessing"]["channel_order"] == "BGR" and meta["embedding_dim"] == 16
    assert parity.contract_problems(onnx_model.session(path), image_size=SIZE) == []
    batch = np.random.rand(5, 3, SIZE, SIZE).astype(np.float32)
    feats = onnx_model.session(path).run(["feats"], {"img": batch})[0]
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)


def test_parity_passes_for_a_faithful_export(tmp_path, trained, config):
    path = export_to(tmp_path / "m.onnx", trained, config)
    report = parity.verify(stage_settings(config, "verify"), trained / "model.ckpt", path, trained / "cache")
    assert report["passed"], json.dumps(report, indent=1)
    assert report["inputs"]["batch_sizes"] == [1, 3]
    assert report["figures"]["val_images"]["batch_1"]["max_abs_diff"] < 1e-5


def test_parity_fails_and_publishes_nothing_for_a_perturbed_export(tmp_path, trained, config):
    path = export_to(tmp_path / "m.onnx", trained, config)
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[::7] += 1e-2
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(path))
    published = tmp_path / "published.onnx"
    with pytest.raises(UserError, match="failed parity verification and is not published: .*max abs diff"):
        parity.run_stage(
            stage_settings(config, "verify"),
            checkpoint=trained / "model.ckpt",
            onnx_path=path,
            cache=trained / "cache" / "summary.json",
            published=published,
            report_path=tmp_path / "parity.json",
            provenance_path=tmp_path / "provenance.json",
        )
    assert not published.exists() and not (tmp_path / "parity.json").exists()


def test_contract_problems_name_the_mismatch(tmp_path):
    class TwoOutputs(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)), x

    path = tmp_path / "bad.onnx"
    torch.onnx.export(
        TwoOutputs(),
        (torch.rand(1, 3, 8, 8),),
        str(path),
        input_names=["image"],
        output_names=["embedding", "raw"],
        dynamo=False,
    )
    problems = parity.contract_problems(onnx_model.session(path))
    assert "inputs are ['image'], the contract wants exactly ['img']" in problems
    assert "outputs are ['embedding', 'raw'], the contract wants 'feats'" in problems


def test_every_metadata_value_is_a_json_document(tmp_path, trained, config):
    """The consumer's ONNX engine json-decodes every metadata_props value when it opens a model."""
    import json

    model = onnx.load(str(export_to(tmp_path / "m.onnx", trained, config)))
    values = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert values["doctrain.config_name"] == "unit"
    assert onnx_model.read_metadata(tmp_path / "m.onnx")["input"]["name"] == "img"


def test_each_held_out_split_is_evaluated_once_by_the_shipped_file(tmp_path, trained, config):
    """Calibration and test rows reach the cache (one variant each) and the evaluation, never the
    training; the shipped threshold is chosen on the calibration pairs and measured on each split."""
    table = pd.read_parquet(trained / "validated.parquet")
    summary = json.loads((trained / "cache" / "summary.json").read_text())
    assert set(summary["samples"]) == {"train", "val", "calibration", "test"}
    opened = cache.Cache(trained / "cache")
    fallback = {"at_fpr": {"0.1": {"tpr": 0.5, "threshold": 0.7, "resolvable": True}}}
    point = export.shipped_threshold(load_trained(trained / "model.ckpt"), opened, fallback, 0.1)
    assert (
        point["chosen_on"] == "6 calibration pairs (4 images of 2 classes that did not select the checkpoint)"
    )
    assert point["threshold"] != 0.7
    model = export_to(tmp_path / "m.onnx", trained, config, {"operating_point": point})
    (tmp_path / "metrics.json").write_text(json.dumps({"val": {"auroc": 0.5, "at_fpr": {}}}))
    evaluation.run_stage(
        {"evaluation": {"bootstrap_resamples": 100, "seed": 0}},
        model=model,
        cache=trained / "cache" / "summary.json",
        metrics=tmp_path / "metrics.json",
        roc_png=tmp_path / "roc.png",
        report=tmp_path / "evaluation.json",
        name="unit",
    )
    record = json.loads((tmp_path / "evaluation.json").read_text())
    for split in ("val", "calibration", "test"):
        assert record[split]["images"] == (table["split"] == split).sum() == 4
        assert record[split]["role"] == evaluation.ROLES[split]
        assert record[split]["at_shipped_threshold"]["threshold"] == point["threshold"]
    assert record["test"]["at_shipped_threshold"]["fpr_95"] is not None
    assert record["artefacts"] == {str(tmp_path / "roc.png"): _io.sha256_file(tmp_path / "roc.png")}
    # without calibration rows the threshold comes from the selection figures, and says so
    no_calibration = prepared(table[table["split"] != "calibration"], tmp_path / "no-calibration", config)
    point = export.shipped_threshold(None, no_calibration, fallback, 0.1)
    assert point["threshold"] == 0.7
    assert point["chosen_on"] == f"{SELECTION_PAIRS} (there is no calibration split)"
    # a calibration split without a same-class pair is the user's to mend, said in one sentence
    singletons = table[(table["split"] != "calibration") | ~table.duplicated("label")]
    with pytest.raises(UserError, match="calibration split has one image per class"):
        export.shipped_threshold(None, prepared(singletons, tmp_path / "singletons", config), fallback, 0.1)


def prepared(table: pd.DataFrame, folder, config) -> cache.Cache:
    """The cache of a validated table."""
    folder.mkdir()
    table.to_parquet(folder / "validated.parquet")
    cache.run_stage(
        stage_settings(config, "prepare"),
        folder / "validated.parquet",
        folder / "images.npy",
        folder / "index.parquet",
        folder / "summary.json",
    )
    return cache.Cache(folder)
