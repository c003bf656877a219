"""One field-declaration mechanism (edge_runtime.fields) behind the daemon's config, the manifest
and the training recipe: the same rule reads the same wherever a value breaks it."""
from dataclasses import fields

import pytest

from edge_runtime import config as C
from edge_runtime.fields import FieldError, spec_of
from edge_runtime.manifest import Artifact, Manifest, ManifestError, Tensor

from train.models import Recipe
from train.recipe import TrainConfig


def test_every_field_of_the_three_contracts_has_a_declaration():
    sections = [type(getattr(C.Config(), f.name)) for f in fields(C.Config)]
    composite = {"dir", "input", "output", "check", "yunet"}  # nested records, checked by their own class
    for cls in [*sections, Recipe, Manifest, Artifact, Tensor]:
        undeclared = [f.name for f in fields(cls) if f.name not in composite and spec_of(f) is None]
        assert not undeclared, (cls.__name__, undeclared)


def test_one_wording_for_a_value_out_of_bounds_or_of_the_wrong_kind():
    with pytest.raises(C.ConfigError, match=r"^tracker\.iou = nan must be in \[0\.01, 1\.0\]$"):
        C.TrackerConfig(iou=float("nan"))
    with pytest.raises(ValueError, match=r"^lr \(--lr\) = nan must be in \[1e-08, 10\.0\]$"):
        TrainConfig(model="cbilstm", recipe={"lr": float("nan")}).resolved()
    with pytest.raises(ManifestError, match=r"size = -1 should be a byte count$"):
        Artifact.from_dict({"format": "tflite", "precision": "int8", "status": "usable", "size": -1}, "art")
    with pytest.raises(C.ConfigError, match=r"^model\.threads = 'two' should be int$"):
        C.ModelConfig(threads="two")
    with pytest.raises(ValueError, match=r"^epochs \(--epochs\) = 'ten' should be int$"):
        TrainConfig(model="cbilstm", recipe={"epochs": "ten"}).resolved()


def test_a_whole_number_from_a_command_line_is_an_int_only_where_declared():
    _, recipe, _ = TrainConfig(model="cbilstm", recipe={"epochs": 10.0}).resolved()
    assert recipe.epochs == 10 and type(recipe.epochs) is int
    with pytest.raises(C.ConfigError, match="should be int"):  # a TOML 10.0 for an int key stays an error
        C.TrackerConfig(max_missed=10.0)
    assert isinstance(FieldError("x"), ValueError)  # every caller that catches ValueError still does


def test_numbers_no_float_can_hold_and_unbounded_infinities_are_errors_not_crashes(tmp_path):
    import json

    from edge_runtime.manifest import read_manifest
    from edge_runtime.packaged import packaged_dir
    m = json.loads((packaged_dir("cbilstm") / "manifest.json").read_text())
    m["artifacts"]["tflite-int8"]["ms_per_face"] = 10 ** 400  # valid JSON, beyond any float
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="ms_per_face = .* is out of range"):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match=r"^mixup = inf must be a finite number$"):
        TrainConfig(model="cbilstm", recipe={"mixup": float("inf")}).resolved()
