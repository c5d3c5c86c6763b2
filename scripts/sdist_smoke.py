"""Run by `make sdist-check` in the fresh venv that installed the sdist, outside the source tree:
the installed package imports, ships its presets and py.typed, and its compiled ops compute what the
plain-PyTorch oracle computes."""
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path

import torch

import twoway_fast
from twoway_fast import ops, presets, reference

site = Path(sysconfig.get_paths()["purelib"]).resolve()
assert Path(twoway_fast.__file__).resolve().is_relative_to(site), f"imported from {twoway_fast.__file__}, not {site}"
assert resources.files("twoway_fast").joinpath("py.typed").is_file(), "py.typed missing"
assert presets.get("mnist", faithful=True).model["hidden"] == [392, 50, 392]  # the paper's, read from the .toml
assert set(presets.names()) >= {"mnist", "xrmb", "flickr8k", "flickr30k", "coco", "digits"}

torch.manual_seed(0)
z = torch.randn(64, 16, dtype=torch.float64)
gamma, beta = torch.rand(16, dtype=torch.float64) + 0.5, torch.randn(16, dtype=torch.float64)
state = torch.tensor([7, 0, 0], dtype=torch.int64)  # seed, offset, first row
args = (z, gamma, beta, state, 0.5, 0.3, 1e-5, True)
fused, expected = ops.hidden_block(*args)[0], reference.hidden_block(*args)[0]
torch.testing.assert_close(fused, expected)

cli = subprocess.run([Path(sys.executable).with_name("twoway-fast"), "--version"], capture_output=True, text=True,
                     check=True).stdout
assert twoway_fast.__version__ in cli, cli
print(f"sdist-check: twoway_fast {twoway_fast.__version__} from {site}, hidden_block matches the reference")
