"""Every configuration value is type-checked where it is parsed (--set, preset and user TOML files, a
run's config.json, TrainConfig/DataConfig), the key and the expected type named: the string "False"
must not pass for a boolean (it is truthy: shuffling would stay on)."""
import json

import pytest

from twoway_fast import presets, run
from twoway_fast.config import DataConfig, TrainConfig
from twoway_fast.config_types import conforms

BAD_SETS = [
    ("train.shuffle=False", "train.shuffle must be a boolean (true or false), got the string 'False'"),
    ("train.shuffle=1", "train.shuffle must be a boolean (true or false), got 1 (int)"),
    ("model.hidden=5", "model.hidden must be a list of integers, got 5 (int)"),
    ("model.hidden=[16, 8.5, 16]", "model.hidden must be a list of integers, got [16, 8.5, 16] (list)"),
    ("model.hidden=[16, 8", "invalid TOML value '[16, 8'"),
    ("train.lr=nan", "train.lr must be finite, got nan"),
    ("train.lr='fast'", "train.lr must be a number, got the string 'fast'"),
    ("train.epochs=2.5", "train.epochs must be an integer, got 2.5 (float)"),
    ("train.epochs=true", "train.epochs must be an integer, got True (bool)"),
    ("data.pca=\"10\"", "data.pca must be an integer, got the string '10'"),
    ("model.dropout=[0.2, \"x\"]", "model.dropout must be a number or a list of numbers"),
    ("loss.lc=inf", "loss.lc must be finite, got inf"),
]


@pytest.mark.parametrize("text, message", BAD_SETS, ids=[t for t, _ in BAD_SETS])
def test_bad_set_values_are_refused_with_key_and_type(text, message):
    with pytest.raises(ValueError) as err:
        presets.resolve("digits", overrides=[text])
    assert message in str(err.value)


@pytest.mark.parametrize("text, value", [
    ("train.shuffle=false", False), ("train.lr=1", 1), ("train.optimizer=Adam", "Adam"),
    ("model.dropout=0.1", 0.1), ("model.dropout=[0.1, 0, 0.1]", [0.1, 0, 0.1]), ("data.mmap=true", True),
    ("model.locally_dense={-1 = 2}", {"-1": 2}), ("model.repr_layer=1", 1),
])
def test_good_set_values_pass(text, value):
    key = text.split("=")[0]
    section, name = key.split(".")
    assert getattr(presets.resolve("digits", overrides=[text]), section)[name] == value


def test_dataclasses_check_their_types():
    with pytest.raises(ValueError, match="train.shuffle must be a boolean"):
        TrainConfig(shuffle="False")
    with pytest.raises(ValueError, match="train.lr must be a positive finite number"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="train.lr must be finite, got nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="data.split_seed must be an integer"):
        DataConfig(split_seed=1.5)


def test_user_toml_file_values_are_checked(tmp_path):
    path = tmp_path / "u.toml"
    path.write_text("[train]\nnesterov = \"yes\"\n")
    with pytest.raises(ValueError, match=f"{path}: train.nesterov must be a boolean"):
        presets.resolve("digits", files=[path])


def test_hand_edited_run_config_is_checked(small_run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    config = json.loads((small_run / run.CONFIG).read_text())
    config["preset"]["model"]["hidden"] = "16,8,16"
    (folder / run.CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: model.hidden must be a list of integers, got the string"):
        run.read_config(folder)


def test_conforms_is_not_fooled_by_bools():
    assert not conforms(True, int) and not conforms(False, float) and conforms(3, float)
