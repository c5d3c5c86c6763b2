"""The run folder: what a training run leaves on disk and how a later command finds it again.

    RUN/config.json      preset (resolved: every value used), data source (an absolute path), view widths, seed
    RUN/preprocessing.npz  the preprocessing fitted on the training split (twoway_fast.data.Preprocessing)
    RUN/last.pt          checkpoint after the latest epoch (model, optimiser, scheduler, generators, epoch)
    RUN/previous.pt      the checkpoint last.pt replaced: resume falls back to it when last.pt is damaged
    RUN/best.pt          checkpoint of the best validation epoch
    RUN/metrics.jsonl    one JSON object per epoch
    RUN/*.png            plots

Every file is written atomically (temporary file, flush, fsync, rename), so a run killed at any moment
leaves the previous version intact, with the permissions the process's umask gives a new file (0644
under umask 022). A checkpoint records the twoway_fast version and the model's
configuration; loading one written by another version or for another model is refused.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .presets import SECTIONS, Preset
from .run_lock import RunLock

CONFIG, LAST, PREVIOUS, BEST, METRICS = "config.json", "last.pt", "previous.pt", "best.pt", "metrics.jsonl"
EVAL, PREPROCESSING = "eval.json", "preprocessing.npz"
CHECKPOINTS = ("best", "last")
# What a run leaves besides its plots: finding any of them means the folder holds a run.
RUN_FILES = (CONFIG, LAST, PREVIOUS, BEST, METRICS, EVAL, PREPROCESSING)
# --resume may change these (the rest would make the checkpoint another run's): how many epochs to
# run and how each step is computed (the same numbers up to rounding).
RESUMABLE = {"train.epochs", "train.cuda_graph", "model.backend"}
# What a checkpoint must match besides its tensor shapes: the TwoWayNet attributes that give its weights
# their meaning. Training-only settings (dropout, BN momentum) may change between runs of one model.
MODEL_FIELDS = ("dx", "dy", "hidden", "repr_layer", "order", "leak", "bn_eps", "locally_dense", "repr_affine",
                "repr_linear")
# Fields added after runs were saved without them, with the value those runs had.
ADDED_FIELDS = {"repr_linear": False}


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read back (truncated, damaged, not a checkpoint)."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint holding objects other than tensors and plain data (weights_only refuses them): a
    file someone else wrote. Never loaded, so whatever code it carries never runs; not "damaged"
    either, so resume refuses it rather than falling back to previous.pt."""


def write_atomic(path: str | Path, data: bytes, keep_previous: str | Path | None = None) -> None:
    """Writes `path` through a temporary file (flushed, fsynced, renamed). With `keep_previous`, the file
    being replaced is first renamed there (a kill between the two renames leaves only that one)."""
    path = Path(path)
    if not path.parent.is_dir():  # else mkstemp names its temporary file, not the folder
        raise FileNotFoundError(errno.ENOENT, f"no folder {path.parent} to write {path.name} into")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600 whatever the umask
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


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status); elsewhere
    set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def claim(run_dir: str | Path, resume: bool, overwrite: bool, outputs: tuple[str, ...] = ()) -> RunLock:
    """Locks `run_dir` (created if missing) for a training that writes there. Unless resuming, a folder
    holding another run is refused, or with `overwrite` emptied of it (RUN_FILES and `outputs`, e.g. the
    plots); resuming needs a run there. Returns the held lock (release it, or use it as a context)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        found = [name for name in RUN_FILES if (run_dir / name).exists()]
        if resume and CONFIG not in found:
            raise ValueError(f"{run_dir}: nothing to resume ({CONFIG} is missing)")
        if not resume and found:
            if not overwrite:
                raise ValueError(f"{run_dir} holds another run ({', '.join(found)}); --resume continues it, "
                                 "--overwrite replaces it, or choose another --out")
            for name in (*RUN_FILES, *outputs):
                path = run_dir / name
                if path.is_dir() and not path.is_symlink():  # a writer's folder (RUN/tensorboard)
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            remove_temporaries(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def check_space(run_dir: str | Path, model, optimizer_copies: int = 2) -> None:
    """Refuses a run whose checkpoints would not fit: last, previous, best and the temporary file of
    one being written, each the model and up to `optimizer_copies` optimiser buffers per parameter."""
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    need = 4 * state_bytes * (1 + optimizer_copies) + (1 << 20)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise ValueError(f"{run_dir}: {free / 2**20:.1f} MiB free, the run's checkpoints need about "
                         f"{need / 2**20:.1f} MiB")


def resume_changes(saved: Preset, wanted: Preset) -> list[str]:
    """The values `wanted` changes from the run's `saved` preset, each as "section.key: saved -> wanted";
    raises ValueError naming those --resume cannot apply (anything outside RESUMABLE)."""
    changes, refused = [], []
    for section in SECTIONS:
        old, new = getattr(saved, section), getattr(wanted, section)
        for key in sorted(set(old) | set(new)):
            if old.get(key, _UNSET) != new.get(key, _UNSET):
                line = f"{section}.{key}: {_shown(old, key)} -> {_shown(new, key)}"
                (changes if f"{section}.{key}" in RESUMABLE else refused).append(line)
    if saved.faithful != wanted.faithful or saved.name != wanted.name:
        refused.append(f"preset: {saved.name}{' (faithful)' * saved.faithful} -> "
                       f"{wanted.name}{' (faithful)' * wanted.faithful}")
    if refused:
        raise ValueError(f"--resume continues the run as it was configured; these options would change it: "
                         f"{'; '.join(refused)} (only {', '.join(sorted(RESUMABLE))} may change on resume)")
    return changes


_UNSET = object()


def _shown(values: dict[str, Any], key: str) -> str:
    return repr(values[key]) if key in values else "(default)"


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
        # weights_only: tensors and plain data only. Anyone who can drop a file into a run folder could
        # otherwise run code as the user through a pickled object's __reduce__.
        state = torch.load(path, map_location=device, weights_only=True)
    except (CorruptCheckpoint, UnsafeCheckpoint):
        raise
    except pickle.UnpicklingError as err:  # what weights_only refuses, before running anything
        raise UnsafeCheckpoint(f"{path}: refused: the checkpoint holds more than tensors and plain data "
                               f"({_what_was_refused(str(err))}); not written by twoway_fast as it is") from None
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


def _what_was_refused(message: str) -> str:
    """The line of torch's weights_only message that names the object (the rest advises loading anyway)."""
    found = re.search(r"WeightsUnpickler error: ([^.\n]*(?:\.[\w.]+)*)", message)
    return found.group(1).strip() if found else "objects weights_only does not load"


def _check_model(path: Path, state: dict[str, Any], model) -> None:
    saved, wanted = state.get("model_config", {}), model_signature(model)
    saved = ADDED_FIELDS | saved
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


def data_path(source: str | Path) -> str:
    """The data source as config.json records it: an absolute path (so eval and embed find it from any
    directory), or the name of an embedded set ("digits")."""
    return "digits" if str(source) == "digits" else str(Path(source).resolve())


def write_config(run_dir: Path, preset: Preset, data_source: str, dx: int, dy: int, seed: int) -> None:
    config = {"preset": preset.to_dict(), "data": data_path(data_source), "dx": dx, "dy": dy, "seed": seed}
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
    """(model in eval mode, run config) from RUN/best.pt or RUN/last.pt; the model takes preprocessed
    rows (a data set's splits). `load` gives it with its preprocessing, for raw rows."""
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {which!r}")
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    model = config["preset"].build_model(config["dx"], config["dy"]).to(device)
    state = load_checkpoint(run_dir / (BEST if which == "best" else LAST), device, model)
    model.load_state_dict(state["model"])
    return model.eval(), config


def load(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"):
    """A trained run as a model to apply (`twoway_fast.load`): the TwoWayNet of RUN/best.pt (by the run's
    train.select on validation) or RUN/last.pt, in eval mode, with the preprocessing fitted on the run's
    training split attached (RUN/preprocessing.npz), so `encode_x` and `encode_y` take raw rows of the
    data's own widths and give what `twoway-fast embed` gives for them. Nothing in the folder is
    unpickled: the checkpoint is read weights-only, the preprocessing as plain arrays."""
    from .data.preprocessing import Preprocessing

    model, config = load_model(run_dir, checkpoint, device)
    path = Path(run_dir) / PREPROCESSING
    if not path.exists():
        raise ValueError(f"{path}: missing (training writes it when it starts); without it the raw rows' "
                         "preprocessing is unknown")
    fitted = Preprocessing.load(path)
    if (fitted.x.out_width, fitted.y.out_width) != (config["dx"], config["dy"]):
        raise ValueError(f"{path}: its preprocessing gives widths ({fitted.x.out_width}, {fitted.y.out_width}), "
                         f"the model of {run_dir} takes ({config['dx']}, {config['dy']})")
    model.preprocessing = fitted
    return model


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
