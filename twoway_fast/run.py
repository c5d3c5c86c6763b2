"""The run folder: what a training run leaves on disk and how a later command finds it again.

    RUN/config.json      preset (resolved: every value used), data source, view widths, seed
    RUN/last.pt          checkpoint after the latest epoch (model, optimiser, scheduler, generators, epoch)
    RUN/best.pt          checkpoint of the best validation epoch
    RUN/metrics.jsonl    one JSON object per epoch
    RUN/*.png            plots

Every file is written atomically (temporary file, flush, fsync, rename), so a run killed at any moment
leaves the previous version intact.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .presets import Preset

CONFIG, LAST, BEST, METRICS = "config.json", "last.pt", "best.pt", "metrics.jsonl"


def write_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no checkpoint there (has this run finished an epoch?)")
    try:
        # weights_only=False: the state holds generator states and plain Python values; the file is
        # one this package wrote into the user's own run folder.
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # a damaged file: say which one
        raise ValueError(f"{path}: cannot read checkpoint: {err}") from err


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
    config["preset"] = Preset.from_dict(config["preset"])
    return config


def load_model(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """(model in eval mode, run config) from RUN/best.pt or RUN/last.pt."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    model = config["preset"].build_model(config["dx"], config["dy"]).to(device)
    state = load_checkpoint(run_dir / (BEST if which == "best" else LAST), device)
    model.load_state_dict(state["model"])
    return model.eval(), config


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    write_atomic(Path(run_dir) / METRICS, text.encode())
