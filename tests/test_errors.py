"""Bad input at the Python API: each is refused with an error that names the file and says what was
expected and what came. (Errors already covered elsewhere, e.g. NaN and row counts in .npz files in
test_data.py, bad model arguments in test_model.py, are not repeated here.)"""
import struct
import warnings

import numpy as np
import pytest
import torch

import twoway_fast
from twoway_fast import data, presets, run
from twoway_fast.cli import main
from twoway_fast.data.idx import read_idx, write_idx
from twoway_fast.model import TwoWayNet

RNG = np.random.default_rng(0)


def small_net(hidden=(6, 2, 6)):
    return TwoWayNet(4, 3, hidden=list(hidden), backend="reference")


# ---------------------------------------------------------------- data files

def test_empty_view(tmp_path):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 4)), y=np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"empty\.npz: view x is empty, shape \(0, 4\)"):
        data.load(tmp_path / "empty.npz")


def test_non_numeric_view(tmp_path):
    np.savez(tmp_path / "text.npz", x=RNG.normal(size=(10, 2)), y=np.array([["a", "b"]] * 10))
    with pytest.raises(ValueError, match=r"text\.npz: view y has non-numeric dtype <U1"):
        data.load(tmp_path / "text.npz")


def test_inf_in_npy_directory(tmp_path):
    x, y = RNG.normal(size=(30, 4)), RNG.normal(size=(30, 3))
    y[11, 0] = -np.inf
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(ValueError, match=r"x\.npy, y\.npy: view y holds NaN or Inf \(first at row 11\)"):
        data.load(tmp_path)


def cache_layout(directory, n=20):
    for split in ("train", "validate", "test"):
        np.save(directory / f"{split}_x.npy", RNG.normal(size=(n, 4)).astype(np.float32))
        np.save(directory / f"{split}_y.npy", RNG.normal(size=(n, 3)).astype(np.float32))


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_npy(tmp_path, mmap):
    cache_layout(tmp_path)
    raw = (tmp_path / "validate_y.npy").read_bytes()
    (tmp_path / "validate_y.npy").write_bytes(raw[:-40])
    with pytest.raises(ValueError, match=r"validate_y\.npy: cannot read as \.npy"):
        data.load(tmp_path, data.DataConfig(mmap=mmap))


def test_empty_npy_file(tmp_path):
    cache_layout(tmp_path)
    (tmp_path / "test_x.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"test_x\.npy: cannot read as \.npy: EOFError"):
        data.load(tmp_path)


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_npz(tmp_path, compressed):
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "full.npz", x=RNG.normal(size=(50, 4)), y=RNG.normal(size=(50, 3)))
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz: cannot read as \.npz: BadZipFile"):
        data.load(tmp_path / "cut.npz")


def test_idx_of_wrong_rank(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 16), np.uint8))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: expected images \(n, height, width\), "
                                         r"got an IDX array of shape \(10, 16\)"):
        data.load(tmp_path)


def test_idx_train_and_test_sizes_differ(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 4, 4), np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 4, 6), np.uint8))
    with pytest.raises(ValueError, match=r"train and test images differ in size \(\(4, 4\) and \(4, 6\)\)"):
        data.load(tmp_path)


def test_idx_header_too_large_for_int64(tmp_path):
    # 3 x (2^32 - 1) elements: their product overflows int64, the check must still say "truncated"
    (tmp_path / "huge.idx").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", *[2**32 - 1] * 3) + bytes(8))
    needs = 16 + (2**32 - 1) ** 3
    with pytest.raises(ValueError, match=rf"huge\.idx: truncated: shape \(4294967295, 4294967295, 4294967295\) "
                                         rf"of uint8 needs {needs} bytes, the file has 24"):
        read_idx(tmp_path / "huge.idx")


def test_missing_idx_file(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.idx: cannot read IDX data: .*No such file"):
        read_idx(tmp_path / "nothere.idx")


# ---------------------------------------------------------------- presets

def test_preset_file_with_unknown_section(tmp_path):
    (tmp_path / "mine.toml").write_text("[optim]\nlr = 1\n")
    with pytest.raises(ValueError, match=r"mine\.toml: unknown sections \['optim'\]; expected \['model', 'loss'"):
        presets.resolve("mnist", files=[tmp_path / "mine.toml"])


def test_preset_file_with_bad_toml_as_the_preset(tmp_path):
    (tmp_path / "broken.toml").write_text("[model]\nhidden = [1, 2\n")
    with pytest.raises(ValueError, match=r"broken\.toml: invalid TOML"):
        presets.resolve(str(tmp_path / "broken.toml"))


# ---------------------------------------------------------------- checkpoints and run folders

def saved(tmp_path, model=None, name="last.pt"):
    model = model or small_net()
    run.save_checkpoint({"model": model.state_dict(), "epoch": 1}, tmp_path / name, model)
    return tmp_path / name


def test_missing_checkpoint(tmp_path):
    with pytest.raises(run.CorruptCheckpoint, match=r"best\.pt: no checkpoint there"):
        run.load_checkpoint(tmp_path / "best.pt")


def test_truncated_checkpoint(tmp_path):
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(run.CorruptCheckpoint, match=r"last\.pt: cannot read checkpoint"):
        run.load_checkpoint(path)


def test_damaged_checkpoint(tmp_path):
    model = small_net()
    path = saved(tmp_path, model)
    raw = bytearray(path.read_bytes())
    at = raw.index(model.weights[0].detach().numpy().tobytes()) + 5  # inside a weight: torch.load would not notice
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(run.CorruptCheckpoint, match=r"last\.pt: damaged checkpoint \(checksum mismatch in .*data/"):
        run.load_checkpoint(path)


def test_checkpoint_of_another_version(tmp_path):
    torch.save({"model": small_net().state_dict(), "twoway_fast_version": "0.0.9"}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=rf"old\.pt: written by twoway_fast 0\.0\.9, this is twoway_fast "
                                         rf"{twoway_fast.__version__}"):
        run.load_checkpoint(tmp_path / "old.pt")
    torch.save({"model": small_net().state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"bare\.pt: written by twoway_fast unknown \(none recorded\)"):
        run.load_checkpoint(tmp_path / "bare.pt")


def test_checkpoint_of_another_configuration(tmp_path):
    path = saved(tmp_path, small_net((6, 2, 6)))
    with pytest.raises(ValueError, match=r"last\.pt: saved for a model of another configuration \(hidden: "
                                         r"checkpoint \[6, 2, 6\], expected \[6, 5, 6\];.*weights\.1: checkpoint "
                                         r"shape \(2, 6\), expected \(5, 6\)"):
        run.load_checkpoint(path, model=small_net((6, 5, 6)))
    other = TwoWayNet(4, 3, hidden=[6, 2, 6], order="bn_then_act", backend="reference")  # same shapes
    with pytest.raises(ValueError, match=r"order: checkpoint 'act_then_bn', expected 'bn_then_act'"):
        run.load_checkpoint(path, model=other)


def test_resume_warns_and_falls_back_to_previous(tmp_path):
    run.save_checkpoint({"model": small_net().state_dict(), "epoch": 1}, tmp_path / run.LAST, keep_previous=True)
    run.save_checkpoint({"model": small_net().state_dict(), "epoch": 2}, tmp_path / run.LAST, keep_previous=True)
    assert run.load_checkpoint(tmp_path / run.PREVIOUS)["epoch"] == 1
    (tmp_path / run.LAST).write_bytes(b"PK\x03\x04 torn")
    with pytest.warns(UserWarning, match=r"last\.pt: cannot read checkpoint.*resuming from .*previous\.pt "
                                         r"\(epoch 1\) instead"):
        assert run.load_latest(tmp_path)["epoch"] == 1
    (tmp_path / run.LAST).unlink()  # killed between the two renames
    with pytest.warns(UserWarning, match=r"last\.pt: no checkpoint there"):
        assert run.load_latest(tmp_path)["epoch"] == 1
    (tmp_path / run.PREVIOUS).write_bytes(b"")
    with warnings.catch_warnings(), pytest.raises(run.CorruptCheckpoint, match=r"previous\.pt: cannot read"):
        warnings.simplefilter("error")
        run.load_latest(tmp_path)


def test_run_config_that_is_not_one(tmp_path):
    (tmp_path / run.CONFIG).write_text('{"preset": {"name": "x", "faithful": false}, "data": "digits"}')
    with pytest.raises(ValueError, match=r"config\.json: not a twoway_fast run configuration \(KeyError: 'dx'\)"):
        run.read_config(tmp_path)


def test_resume_with_data_of_other_widths(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    run.write_config(out, presets.get("digits"), "digits", 32, 32, 0)
    np.savez(tmp_path / "wide.npz", x=RNG.random((60, 5)), y=RNG.random((60, 32)))
    assert main(["train", "--out", str(out), "--resume", "--data", str(tmp_path / "wide.npz"), "--device", "cpu"]) == 2
    assert f"wide.npz: view widths (5, 32) do not match the model of {out} (32, 32)" in capsys.readouterr().err


@pytest.mark.parametrize("mmap", [False, True])
def test_npy_header_claiming_more_rows_than_the_file_holds(tmp_path, mmap, monkeypatch):
    cache_layout(tmp_path)
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 3), np.float32))
    header["shape"] = (2**40, 3)  # 12 TiB claimed, 12 bytes there
    with open(tmp_path / "train_x.npy", "wb") as f:  # the first file read
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(3, np.float32).tobytes())
    monkeypatch.setattr(np, "load", None)  # refused from the header alone: numpy never gets to allocate
    with pytest.raises(ValueError, match=r"train_x\.npy: cannot read as \.npy: truncated: its header claims "
                                         r"shape \(1099511627776, 3\) of float32"):
        data.load(tmp_path, data.DataConfig(mmap=mmap))


def test_npz_member_header_claiming_more_rows_than_it_holds(tmp_path):
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 3), np.float32))
    header["shape"] = (2**40, 3)
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        for name in ("x.npy", "y.npy"):
            with archive.open(name, "w") as f:
                np.lib.format.write_array_header_1_0(f, header)
                f.write(np.zeros(3, np.float32).tobytes())
    with pytest.raises(ValueError, match=r"d\.npz \(x\.npy\): cannot read as \.npy: truncated"):
        data.load(tmp_path / "d.npz")


def test_checkpoint_from_before_repr_linear_loads_as_rectified(tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # a checkpoint of a version without the field
        m.setattr(run, "MODEL_FIELDS", tuple(f for f in run.MODEL_FIELDS if f != "repr_linear"))
        path = saved(tmp_path)
    assert "repr_linear" not in torch.load(path, weights_only=True)["model_config"]
    run.load_checkpoint(path, model=small_net())
    linear = TwoWayNet(4, 3, hidden=[6, 2, 6], backend="reference", repr_linear=True)
    with pytest.raises(ValueError, match=r"repr_linear: checkpoint False, expected True"):
        run.load_checkpoint(path, model=linear)
