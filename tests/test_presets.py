import pytest

from twoway_fast import presets

PAPER = {  # docs/method.md#training: hidden, repr position, order, lh, lc, epochs (faithful)
    "mnist": ([392, 50, 392], 1, "act_then_bn", 0.5, 0.05, 80),
    "xrmb": ([560, 280, 112, 680, 1365], 2, "act_then_bn", 0.5, 0.05, 60),
    "flickr8k": ([2000, 3000, 4000], 1, "bn_then_act", 0.25, 0.5, 100),
    "flickr30k": ([2000, 3000, 16000], 1, "bn_then_act", 0.25, 0.5, 100),
    "coco": ([2000, 3000, 16000], 1, "bn_then_act", 0.25, 0.5, 100),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_faithful_form_is_the_original(name):
    p = presets.get(name, faithful=True)
    hidden, r, order, lh, lc, epochs = PAPER[name]
    assert (p.model["hidden"], p.model["repr_layer"], p.model["order"]) == (hidden, r, order)
    assert (p.model["dropout"], p.model["bn_eps"], p.model["leak"]) == (0.5, 1e-3, 0.3)
    loss = p.loss
    assert (loss["lh"], loss["lc"], loss["lx"], loss["ly"], loss["wd"], loss["lg"]) == (lh, lc, 1, 1, 0.05, 0.05)
    assert (p.loss["decorrelation"], p.loss["decorrelation_input"]) == ("second_moment", "after_dropout")
    t = p.train
    assert (t["epochs"], t["batch_size"], t["optimizer"], t["lr"], t["momentum"], t["nesterov"]) == (
        epochs, 128, "sgd", 1e-4, 0.9, True)
    assert (t["lr_milestones"], t["lr_gamma"], t["shuffle"]) == ([20, 40, 60, 80], 0.5, False)
    assert t.get("lr_schedule", "multistep") == "multistep" and loss.get("midway", "sum") == "sum"
    assert loss.get("reconstruction", "sum") == "sum" and p.model.get("repr_affine", True) is True
    assert p.model.get("repr_linear", False) is False


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_has_only_known_keys(name):
    for faithful in (False, True):
        presets.get(name, faithful).check(name)


def test_default_form_differs_where_collapse_was_fixed():
    p = presets.get("mnist")
    assert p.model["bn_eps"] == 1e-5 and p.model["dropout"] == 0.0 and p.model["repr_affine"] is False
    assert p.model["repr_linear"] is True
    assert p.loss["decorrelation"] == "correlation" and p.loss["decorrelation_input"] == "before_dropout"
    assert p.loss["reconstruction"] == "mean" and p.loss["wd"] == 1e-4
    assert p.loss["midway"] == "sum" and p.train["lr_schedule"] == "cosine" and p.data["preprocess"] == "none"
    assert presets.get("mnist", faithful=True).data["preprocess"] == "l2_rows"  # the paper's rows
    for name in ("xrmb", "flickr8k", "flickr30k", "coco"):  # the changes that do not depend on the architecture
        other = presets.get(name)
        assert other.model["repr_affine"] is False and other.loss["reconstruction"] == "mean", name
        assert other.model["repr_linear"] is True, name


def test_overrides_and_user_files(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text('[loss]\nlh = 3.0\n[train]\nepochs = 7\n')
    p = presets.resolve("mnist", files=[user], overrides=["train.epochs=9", "model.hidden=[10, 4, 10]",
                                                          "train.optimizer=Adam"])
    assert (p.loss["lh"], p.train["epochs"], p.model["hidden"], p.train["optimizer"]) == (3.0, 9, [10, 4, 10], "Adam")
    assert presets.get("mnist").loss["lh"] != 3.0  # the packaged preset is untouched
    with pytest.raises(ValueError, match=r"unknown loss keys \['lhh'\]"):
        presets.resolve("mnist", overrides=["loss.lhh=1"])
    with pytest.raises(ValueError, match="must look like section.key=value"):
        presets.parse_override("lh=1")
    with pytest.raises(ValueError, match="unknown sections"):
        presets.resolve("mnist", overrides=["optim.lr=1"])
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        presets.resolve("nope")
    (tmp_path / "bad.toml").write_text("[loss\n")
    with pytest.raises(ValueError, match=r"bad\.toml: invalid TOML"):
        presets.resolve("mnist", files=[tmp_path / "bad.toml"])


def test_round_trip_through_dict():
    p = presets.resolve("xrmb", faithful=True, overrides=["loss.lh=1.5"])
    assert presets.Preset.from_dict(p.to_dict()) == p


def test_loss_midway_is_a_preset_key():
    from twoway_fast import TwoWayNet

    model = TwoWayNet(4, 4, [8, 2, 8])
    assert presets.resolve("mnist").build_loss(model).midway == "sum"
    assert presets.resolve("mnist", overrides=["loss.midway=log"]).build_loss(model).midway == "log"
    assert presets.resolve("digits", overrides=["loss.midway=log"]).build_loss(model).midway == "log"
    with pytest.raises(ValueError, match=r"loss\.midway must be a string, got 1 \(int\)"):
        presets.resolve("mnist", overrides=["loss.midway=1"])
    with pytest.raises(ValueError, match="midway must be one of"):
        presets.resolve("mnist", overrides=["loss.midway=median"]).build_loss(model)
