import json

import numpy as np
import pytest

import torch

from twoway_fast import run
from twoway_fast.projection import Projection
from twoway_fast.cli import main

SMALL = ["--set", "model.hidden=[16,8,16]", "--set", "train.optimizer='Adam'", "--lr", "0.001", "--no-progress",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--preset", "digits", "--data", "digits", "--out", str(out), "--epochs", "2", *SMALL]) == 0
    return out


def test_train_writes_the_run_folder(trained, capsys):
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "best.pt", "last.pt", "metrics.jsonl", "eval.json", "preprocessing.npz", "projection.npz",
            "loss.png", "validation.png", "spectrum.png", "recall.png", "cross_correlation.png",
            "reconstructions.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert len(run.read_metrics(trained)) == 2


def test_eval_json(trained, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained), "--data", "digits", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"total_correlation", "cca_correlation", "effective_rank", "x2y", "y2x"}
    for direction in ("x2y", "y2x"):
        assert set(result[direction]) == {"r1", "r5", "r10", "medr"}
        assert 0 <= result[direction]["r1"] <= result[direction]["r5"] <= result[direction]["r10"] <= 100
    assert 0 < result["effective_rank"] <= 8 and result["total_correlation"] <= 8
    assert result == json.loads((trained / "eval.json").read_text())  # the best checkpoint, evaluated again
    for direction in ("x2y", "y2x"):  # the CCA-projected representations' retrieval, reported beside
        assert 0 <= result["projected"][direction]["r1"] <= result["projected"][direction]["r10"] <= 100


def test_embed_projected_applies_the_runs_projection(trained, tmp_path):
    raw, projected = tmp_path / "raw.npz", tmp_path / "projected.npz"
    common = ["--data", "digits", "--split", "test", "--device", "cpu"]
    assert main(["embed", str(trained), *common, "--out", str(raw)]) == 0
    assert main(["embed", str(trained), *common, "--out", str(projected), "--projected"]) == 0
    saved = Projection.load(trained / "projection.npz")
    with np.load(raw) as r, np.load(projected) as p:
        np.testing.assert_allclose(p["x"], (r["x"] - saved.mean_x) @ saved.wx, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(p["y"], (r["y"] - saved.mean_y) @ saved.wy, rtol=1e-4, atol=1e-4)
        # Canonical directions: uncorrelated within a view, paired correlations in decreasing order.
        corr = np.corrcoef(p["x"].T.astype(np.float64))
        assert np.abs(corr - np.diag(np.diag(corr))).max() < 0.35
    assert saved.correlations[0] >= saved.correlations[-1]


def test_projection_file_is_checked(tmp_path):
    bad = tmp_path / "projection.npz"
    np.savez(bad, wx=np.ones((3, 2)))
    with pytest.raises(ValueError, match="not a projection file"):
        Projection.load(bad)
    bad.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="cannot read the CCA projection"):
        Projection.load(bad)
    good = Projection.fit(torch.randn(50, 4, dtype=torch.float64), torch.randn(50, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="width 4"):
        good.x(torch.randn(3, 5))


def test_embed(trained, tmp_path, capsys):
    out = tmp_path / "val.npz"
    args = ["embed", str(trained), "--data", "digits", "--split", "val", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    with np.load(out) as z:
        assert z["x"].dtype == np.float32 and z["y"].dtype == np.float32
        assert z["x"].shape == z["y"].shape and z["x"].shape[1] == 8
        rows = z["x"].shape[0]
    assert main(["eval", str(trained), "--split", "val", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["rows"] == rows


def test_linear_cca_baseline(capsys):
    assert main(["cca", "--data", "digits", "--preset", "digits", "--dims", "8", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dims"] == 8 and result["cca_correlation"] == result["total_correlation"] > 3
    assert result["effective_rank"] > 6  # canonical variates are uncorrelated by construction


def test_resume_extends_the_run(trained):
    assert main(["train", "--out", str(trained), "--resume", "--epochs", "3", "--no-progress", "--device", "cpu"]) == 0
    assert [r["epoch"] for r in run.read_metrics(trained)] == [1, 2, 3]


def test_errors_name_the_problem(trained, tmp_path, capsys):
    np.savez(tmp_path / "wide.npz", x=np.random.rand(50, 5), y=np.random.rand(50, 32))
    assert main(["eval", str(trained), "--data", str(tmp_path / "wide.npz"), "--device", "cpu"]) == 2
    assert "view widths (5, 32) do not match the model" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--device", "cpu"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "r"), "--set", "loss.nope=1"]) == 2
    assert "unknown loss keys ['nope']" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
