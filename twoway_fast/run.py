"""The run folder: what a training run leaves on disk and how a later command finds it again.

    RUN/config.json      preset (resolved: every value used), data source, view widths, seed
    RUN/last.pt          checkpoint after the latest epoch (model, optimiser, scheduler, generators, epoch)
    RUN/previous.pt      the checkpoint last.pt replaced: resume falls back to it when last.pt is damaged
    RUN/best.pt          checkpoint of the best validation epoch
    RUN/metrics.jsonl    one JSON object per epoch
    RUN/*.png            plots

Every file is written atomically (temporary file, flush, fsync, rename), so a run killed at any moment
leaves the previous version intact. A checkpoint records the twoway_fast version and the model's
configuration; loading one written by another version or for another model is refused.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .presets import Preset

CONFIG, LAST, PREVIOUS, BEST, METRICS = "config.json", "last.pt", "previous.pt", "best.pt", "metrics.jsonl"
# What a checkpoint must match besides its tensor shapes: the TwoWayNet attributes that give its weights
# their meaning. Training-only settings (dropout, BN momentum) may change between runs of one model.
MODEL_FIELDS = ("dx", "dy", "hidden", "repr_layer", "order", "leak", "bn_eps", "locally_dense", "repr_affine")


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read back (truncated, damaged, not a checkpoint)."""


def write_atomic(path: str | Path, data: bytes, keep_previous: str | Path | None = None) -> None:
    """Writes `path` through a temporary file (flushed, fsynced, renamed). With `keep_previous`, the file
    being replaced is first renamed there (a kill between the two renames leaves only that one)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the renames themselves durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_temporaries(run_dir: str | Path) -> None:
    """Deletes what write_atomic leaves when killed before its rename (call with no writer running)."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def model_signature(model) -> dict[str, Any]:
    return {name: getattr(model, name, None) for name in MODEL_FIELDS}


def save_checkpoint(state: dict[str, Any], path: str | Path, model=None, keep_previous: bool = False) -> None:
    """Saves `state` with the package version and, given `model`, its configuration. keep_previous: the
    checkpoint replaced is kept as PREVIOUS next to it."""
    path = Path(path)
    state = state | {"twoway_fast_version": __version__}
    if model is not None:
        state["model_config"] = model_signature(model)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue(), path.parent / PREVIOUS if keep_previous else None)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", model=None) -> dict[str, Any]:
    """The state saved at `path`. Raises CorruptCheckpoint when the file is missing or damaged, and
    ValueError when another twoway_fast version wrote it or, given `model`, when it was saved for a
    model of another configuration; every message names the file."""
    path = Path(path)
    if not path.exists():
        raise CorruptCheckpoint(f"{path}: no checkpoint there (has this run finished an epoch?)")
    try:
        # torch.save writes a zip archive with a CRC per member, which torch.load does not verify:
        # testzip does, so a damaged tensor is caught here rather than trained on.
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise CorruptCheckpoint(f"{path}: damaged checkpoint (checksum mismatch in {bad})")
        # weights_only=False: the state holds generator states and plain Python values; the file is
        # one this package wrote into the user's own run folder.
        state = torch.load(path, map_location=device, weights_only=False)
    except CorruptCheckpoint:
        raise
    except Exception as err:  # a damaged file: say which one
        raise CorruptCheckpoint(f"{path}: cannot read checkpoint: {err}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CorruptCheckpoint(f"{path}: not a twoway_fast checkpoint (no model state in it)")
    version = state.get("twoway_fast_version", "unknown (none recorded)")
    if version != __version__:
        raise ValueError(f"{path}: written by twoway_fast {version}, this is twoway_fast {__version__}; "
                         "checkpoints are read only by the version that wrote them")
    if model is not None:
        _check_model(path, state, model)
    return state


def _check_model(path: Path, state: dict[str, Any], model) -> None:
    saved, wanted = state.get("model_config", {}), model_signature(model)
    differ = [f"{k}: checkpoint {saved.get(k)!r}, expected {wanted[k]!r}" for k in MODEL_FIELDS
              if saved.get(k) != wanted[k]]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state["model"].items()}
    differ += [f"{k}: checkpoint shape {got.get(k)}, expected {shapes.get(k)}"
               for k in sorted(set(shapes) | set(got)) if shapes.get(k) != got.get(k)]
    if differ:
        raise ValueError(f"{path}: saved for a model of another configuration ({'; '.join(differ)})")


def load_latest(run_dir: str | Path, device: str | torch.device = "cpu", model=None) -> dict[str, Any]:
    """RUN/last.pt, or RUN/previous.pt with a warning when last.pt is missing or damaged."""
    run_dir = Path(run_dir)
    try:
        return load_checkpoint(run_dir / LAST, device, model)
    except CorruptCheckpoint as err:
        if not (run_dir / PREVIOUS).exists():
            raise
        state = load_checkpoint(run_dir / PREVIOUS, device, model)
        warnings.warn(f"{err}; resuming from {run_dir / PREVIOUS} (epoch {state.get('epoch')}) instead",
                      stacklevel=2)
        return state


def write_config(run_dir: Path, preset: Preset, data_source: str, dx: int, dy: int, seed: int) -> None:
    config = {"preset": preset.to_dict(), "data": str(data_source), "dx": dx, "dy": dy, "seed": seed}
    write_atomic(run_dir / CONFIG, (json.dumps(config, indent=2) + "\n").encode())


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    try:
        config = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{run_dir}: not a run folder ({CONFIG}: {err.strerror})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from err
    try:
        config["preset"] = Preset.from_dict(config["preset"])
        config["dx"], config["dy"] = int(config["dx"]), int(config["dy"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a twoway_fast run configuration ({type(err).__name__}: {err})") from err
    config["preset"].check(str(path))
    return config


def check_widths(source: str | Path, dx: int, dy: int, run_dir: str | Path, config: dict[str, Any]) -> None:
    """Data of widths (dx, dy) from `source` must fit the model of the run (config from read_config)."""
    if (dx, dy) != (config["dx"], config["dy"]):
        raise ValueError(f"{source}: view widths ({dx}, {dy}) do not match the model of {run_dir} "
                         f"({config['dx']}, {config['dy']})")


def load_model(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """(model in eval mode, run config) from RUN/best.pt or RUN/last.pt."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    model = config["preset"].build_model(config["dx"], config["dy"]).to(device)
    state = load_checkpoint(run_dir / (BEST if which == "best" else LAST), device, model)
    model.load_state_dict(state["model"])
    return model.eval(), config


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON line: {err}") from err


def write_metrics(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    write_atomic(Path(run_dir) / METRICS, text.encode())
