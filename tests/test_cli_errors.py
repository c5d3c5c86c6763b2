"""Every expected failure of the command line (bad file, path, value or device, a folder that is
missing, a header that lies, a hand-edited run configuration) ends in one line on stderr naming the
problem and exit status 2, never a traceback; an unexpected exception keeps its traceback."""
import json
import shutil

import numpy as np
import pytest
import torch

from twoway_fast import cli, run
from twoway_fast.cli import main
from twoway_fast.data.idx import write_idx


def npy_claiming_rows(path, rows):
    """A valid .npy header for (rows, 4) float32 followed by one row of data."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 4), np.float32))
    header["shape"] = (rows, 4)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(4, np.float32).tobytes())


def edited_run(small_run, tmp, edit):
    folder = tmp / "edited"
    shutil.copytree(small_run, folder)
    config = json.loads((folder / run.CONFIG).read_text())
    edit(config)
    (folder / run.CONFIG).write_text(json.dumps(config))
    return str(folder)


def setup_case(name, tmp, small_run):
    """The arguments of case `name` (its files made under tmp)."""
    cpu = ["--device", "cpu"]
    train = ["train", "--data", "digits", "--out", str(tmp / "r"), "--no-progress", *cpu]
    if name == "zero_idx_images":
        (tmp / "idx").mkdir()
        write_idx(tmp / "idx" / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
        return ["train", "--data", str(tmp / "idx"), "--out", str(tmp / "r"), *cpu]
    if name == "npy_header_claims_2^40_rows":
        (tmp / "npy").mkdir()
        npy_claiming_rows(tmp / "npy" / "x.npy", 2**40)
        np.save(tmp / "npy" / "y.npy", np.zeros((1, 4), np.float32))
        return ["train", "--data", str(tmp / "npy"), "--out", str(tmp / "r"), *cpu]
    if name == "malformed_toml_file":
        (tmp / "bad.toml").write_text("[train\nlr = 1")
        return [*train, "--config", str(tmp / "bad.toml")]
    if name == "unreadable_npz":
        (tmp / "bad.npz").write_bytes(b"not a zip at all")
        return ["cca", "--data", str(tmp / "bad.npz"), *cpu]
    if name == "hand_edited_config_json":
        return ["eval", edited_run(small_run, tmp, lambda c: c["preset"]["model"].update(hidden="wide")), *cpu]
    if name == "config_json_not_json":
        folder = tmp / "broken"
        shutil.copytree(small_run, folder)
        (folder / run.CONFIG).write_text("{")
        return ["eval", str(folder), *cpu]
    if name == "embed_into_missing_folder":
        return ["embed", str(small_run), "--out", str(tmp / "missing" / "z.npz"), *cpu]
    if name == "path_component_over_255_bytes":
        return ["train", "--data", "digits", "--out", str(tmp / ("a" * 300)), *cpu]
    return {
        "threads_negative": ["--threads", "-1", "cca", "--data", "digits", *cpu],
        "threads_zero": ["--threads", "0", "cca", "--data", "digits", *cpu],
        "device_cuda_without_cuda": ["cca", "--data", "digits", "--device", "cuda"],
        "device_unknown": ["cca", "--data", "digits", "--device", "gpu0"],
        "device_meta": ["cca", "--data", "digits", "--device", "meta"],
        "set_python_false": [*train, "--set", "train.shuffle=False"],
        "set_wrong_type": [*train, "--set", "model.hidden=5"],
        "set_malformed_toml": [*train, "--set", "model.hidden=[1,"],
        "lr_nan": [*train, "--lr", "nan"],
        "missing_config_file": [*train, "--config", str(tmp / "none.toml")],
        "missing_data": ["cca", "--data", str(tmp / "none"), *cpu],
        "not_a_run_folder": ["eval", str(tmp), *cpu],
        "nproc_zero": [*train, "--nproc", "0"],
        "resume_nothing": ["train", "--out", str(tmp / "empty"), "--resume", *cpu],
    }[name]


CASES = {
    "threads_negative": "--threads must be at least 1, got -1",
    "threads_zero": "--threads must be at least 1, got 0",
    "device_cuda_without_cuda": "--device cuda: CUDA is not available",
    "device_unknown": "--device 'gpu0'",
    "device_meta": "--device 'meta': twoway-fast runs on cpu or cuda",
    "set_python_false": "train.shuffle must be a boolean (true or false), got the string 'False'",
    "set_wrong_type": "model.hidden must be a list of integers, got 5 (int)",
    "set_malformed_toml": "invalid TOML value '[1,'",
    "lr_nan": "train.lr must be finite, got nan",
    "missing_config_file": "cannot read preset file",
    "malformed_toml_file": "invalid TOML",
    "missing_data": "does not exist",
    "unreadable_npz": "cannot read as .npz",
    "zero_idx_images": "train-images-idx3-ubyte: no images in it (IDX shape (0, 28, 28))",
    "npy_header_claims_2^40_rows": "x.npy: cannot read as .npy: truncated: its header claims shape (1099511627776, 4)",
    "not_a_run_folder": "not a run folder",
    "hand_edited_config_json": "model.hidden must be a list of integers, got the string 'wide'",
    "config_json_not_json": "config.json: invalid JSON",
    "embed_into_missing_folder": "no folder",
    "path_component_over_255_bytes": "File name too long",
    "nproc_zero": "--nproc must be at least 1, got 0",
    "resume_nothing": "not a run folder",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_expected_failure_is_one_line(name, small_run, tmp_path, capsys):
    if name == "device_cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args = setup_case(name, tmp_path, small_run)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert CASES[name] in err, err
    assert err.count("\n") == 1 and err.startswith("twoway-fast ") and "Traceback" not in err, err


def test_unexpected_exception_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_cca", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["cca", "--data", "digits", "--device", "cpu"])


@pytest.mark.parametrize("args, message", [
    (["eval", "RUN", "--split", "nope"], "argument --split: invalid choice: 'nope'"),
    (["train", "--data", "digits"], "the following arguments are required: --out"),
    (["--threads", "two", "cca", "--data", "digits"], "argument --threads: invalid int value: 'two'"),
])
def test_usage_errors_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1, err
