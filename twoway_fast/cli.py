"""The command line: `twoway-fast` or `python -m twoway_fast`.

    twoway-fast train --preset mnist --data DIR|digits --out RUN [--faithful] [--config FILE] [--set loss.lh=2]
                      [--log csv|tensorboard] [--nproc N] [--no-sync-stats]     (or torchrun --nproc-per-node N -m twoway_fast train ...)
    twoway-fast eval RUN --data DIR [--split test] [--json]
    twoway-fast embed RUN --data DIR [--split test] --out FILE.npz     (the rows of one split of a source)
    twoway-fast encode RUN [--x FILE] [--y FILE] --out FILE.npz        (every row of new data)
    twoway-fast cca --data DIR [--preset mnist] [--dims 50] [--split test] [--json]    (the linear CCA baseline)
    twoway-fast demo
    twoway-fast --version

Every command takes --device (default auto: cuda when available) and --threads N, the latter before or
after the command's name; `twoway-fast COMMAND --help` lists every option with its default.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

# Only what the parser needs is imported here, so `--help` and `--version` start without torch; each
# command imports the rest when it runs.
from . import presets
from ._version import __version__
from .config import SPLITS

LOGGERS = ("csv", "tensorboard")  # train --log: callbacks.WRITERS, named here so --help need not import torch

DEVICE_HELP = "torch device: cpu, cuda, cuda:N, or auto (cuda when available)"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_for_run(args):
    from . import run

    model, config = run.load_model(args.run, args.checkpoint, args.device)
    return model, _run_dataset(args, config)


def _run_dataset(args, config):
    """The data source given (--data), else the run's, split by the run's [data] settings and through
    the preprocessing the run fitted on its training split (refitted here for a run without one)."""
    from . import data as data_mod
    from . import run

    source = getattr(args, "data", None) or config["data"]
    saved = Path(args.run) / run.PREPROCESSING
    fitted = data_mod.Preprocessing.load(saved) if saved.exists() else None
    dataset = data_mod.load(source, data_mod.DataConfig(**config["preset"].data), args.device, fitted)
    run.check_widths(source, dataset.dx, dataset.dy, args.run, config)
    return dataset


def _toml_value(value) -> str:
    """A flag's value in TOML syntax (json.dumps would write NaN and Infinity, which TOML spells nan, inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return json.dumps(value)


def check_device(name: str) -> None:
    """Refuses a device this machine cannot run on, before any work."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: {err}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: twoway-fast runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} GPUs")


def launch(nproc: int, argv: list[str]) -> int:
    """`train --nproc N`: the same command line in N processes under torchrun (torch.distributed.run).
    --nproc itself is left out: torchrun's parser would take it for an abbreviation of its own option."""
    at = next(i for i, a in enumerate(argv) if len(a.split("=")[0]) >= 4 and "--nproc".startswith(a.split("=")[0]))
    rest = argv[:at] + argv[at + (1 if "=" in argv[at] else 2):]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "twoway_fast", *rest]
    return subprocess.run(command).returncode


def cmd_train(args) -> int:
    from . import heap, run
    from .pipeline import format_results, train_run

    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, args.argv)
    overrides = list(args.set)
    for flag, key in (("epochs", "train.epochs"), ("lr", "train.lr"), ("batch_size", "train.batch_size"),
                      ("seed", "train.seed"), ("backend", "model.backend")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={_toml_value(getattr(args, flag))}")
    if args.no_sync_stats:
        overrides.append("train.sync_stats=false")
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume continues the run in --out, --overwrite replaces it: choose one")
        saved = run.read_config(args.out)
        preset = saved["preset"]
        if args.preset is not None or args.faithful or args.config:  # compared whole, as resolved
            preset = presets.resolve(args.preset or preset.name, args.faithful, args.config, overrides)
        else:
            for text in overrides:
                preset = preset.merged(presets.parse_override(text), f"override {text!r}")
        for change in run.resume_changes(saved["preset"], preset):
            print(f"resuming with {change}", file=sys.stderr)
        source = args.data or saved["data"]
    else:
        if not args.data:
            raise ValueError("train needs --data (a directory, an .npz file, or 'digits')")
        preset = presets.resolve(args.preset or "mnist", args.faithful, args.config, overrides)
        source = args.data
    heap.keep_freed_memory()  # a training process: each step reuses the last one's memory (twoway_fast.heap)
    results = train_run(preset, source, args.out, args.device, args.resume, not args.no_progress, args.overwrite,
                        args.log)
    if results is None:  # a rank other than 0
        return 0
    print(format_results({"2-Way Net": results}))
    print(f"run folder: {args.out}")
    return 0


def _projection_for(args, model, dataset=None):
    """The run's saved projection for its best checkpoint; else one fitted on the training split of
    `dataset` (None: the run's own data)."""
    from . import run
    from .evaluation import fit_projection
    from .projection import FILE as PROJECTION
    from .projection import Projection

    saved = Path(args.run) / PROJECTION
    if args.checkpoint == "best" and saved.exists():
        return Projection.load(saved)
    return fit_projection(model, dataset or _run_dataset(args, run.read_config(args.run)))


def cmd_eval(args) -> int:
    from .evaluation import evaluate
    from .pipeline import format_results

    model, dataset = _load_for_run(args)
    results = evaluate(model, dataset, args.split, _projection_for(args, model, dataset))
    print(json.dumps(results) if args.json else format_results({"2-Way Net": results}))
    return 0


def cmd_embed(args) -> int:
    import io

    import numpy as np

    from . import run
    from .evaluation import encode

    model, dataset = _load_for_run(args)
    zx, zy = encode(model, dataset.split(args.split))
    if args.projected:
        projection = _projection_for(args, model, dataset)
        zx, zy = projection.x(zx), projection.y(zy)
    buffer = io.BytesIO()
    np.savez(buffer, x=zx.cpu().numpy().astype(np.float32), y=zy.cpu().numpy().astype(np.float32))
    run.write_atomic(args.out, buffer.getvalue())
    kind = "CCA-projected" if args.projected else "raw"
    print(f"wrote {args.out}: x {tuple(zx.shape)}, y {tuple(zy.shape)} float32, {kind} ({args.split} split)")
    return 0


def cmd_encode(args) -> int:
    import io

    import numpy as np
    import torch

    from . import run
    from .data import CHUNK, load_view

    if args.x is None and args.y is None:
        raise ValueError("encode needs --x FILE, --y FILE or both")
    model = run.load(args.run, args.checkpoint, args.device)
    projection = _projection_for(args, model) if args.projected else None
    encoded = {}
    for view in ("x", "y"):
        path = getattr(args, view)
        if path is None:
            continue
        rows = load_view(path, view)
        encode = model.encode_x if view == "x" else model.encode_y
        try:
            with torch.no_grad():
                z = torch.cat([encode(rows[s:s + CHUNK]) for s in range(0, len(rows), CHUNK)])
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if projection is not None:
            z = projection.x(z) if view == "x" else projection.y(z)
        encoded[view] = z.cpu().numpy().astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **encoded)
    run.write_atomic(args.out, buffer.getvalue())
    kind = "CCA-projected" if args.projected else "raw"
    shapes = ", ".join(f"{v} {a.shape}" for v, a in encoded.items())
    print(f"wrote {args.out}: {shapes} float32, {kind}, every row of the input in order")
    return 0


def cmd_cca(args) -> int:
    from . import data as data_mod
    from .evaluation import linear_cca_baseline
    from .pipeline import format_results

    preset = presets.resolve(args.preset, False, args.config, args.set)
    dataset = data_mod.load(args.data, data_mod.DataConfig(**preset.data), args.device)
    results = linear_cca_baseline(dataset, args.dims, args.split)
    print(json.dumps(results) if args.json else format_results({"linear CCA": results}))
    return 0


def cmd_demo(args) -> int:
    from . import heap
    from .demo import demo

    heap.keep_freed_memory()
    demo(args.out, args.device, args.epochs, progress=not args.no_progress)
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, a flag's False, [])."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def global_options(p: argparse.ArgumentParser, default) -> None:
    """Options every command takes, before or after its name. Under a command they default to
    SUPPRESS, so a value given before the command name is not reset there."""
    p.add_argument("--threads", type=int, default=default,
                   help="CPU threads for torch (default: torch's choice, usually the core count)")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too, like every other expected failure (--help shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="twoway-fast", formatter_class=HelpFormatter,
                                description="2-Way Nets (Eisenschtat and Wolf, CVPR 2017): train, evaluate, encode.")
    p.add_argument("--version", action="version", version=f"twoway-fast {__version__}")
    global_options(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="what to do; `twoway-fast COMMAND --help` for its options")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        global_options(c, argparse.SUPPRESS)
        return c

    preset_help = f"one of {', '.join(presets.names())}, or a preset .toml file"
    config_help = "TOML file laid over the preset (sections [model], [loss], [train], [data]); repeatable"
    set_help = "override one preset value, TOML syntax (e.g. loss.lh=2.0, model.hidden=[64,16,64]); repeatable"
    from_preset = "(default: the preset's {})"

    t = command("train", "train a 2-Way Net and evaluate its best checkpoint on test")
    # No default: --resume must tell a given --preset from none (the default, mnist, is applied later).
    t.add_argument("--preset", help=preset_help + " (default: mnist; with --resume, the run's)")
    t.add_argument("--data", help="data directory, .npz file, or 'digits' (the embedded set); "
                                  "with --resume, default: the run's")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, plots)")
    t.add_argument("--faithful", action="store_true",
                   help="the original's settings exactly (docs/method.md, faithful and default settings)")
    t.add_argument("--config", action="append", default=[], metavar="FILE", help=config_help)
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=set_help)
    t.add_argument("--epochs", type=int, help="training epochs " + from_preset.format("train.epochs"))
    t.add_argument("--lr", type=float, help="learning rate " + from_preset.format("train.lr"))
    t.add_argument("--batch-size", type=int,
                   help="global batch size, over all processes " + from_preset.format("train.batch_size"))
    t.add_argument("--seed", type=int, help="seed of the initialisation, batch order and dropout "
                   + from_preset.format("train.seed"))
    t.add_argument("--backend", choices=["auto", "fused", "reference"],
                   help="fused: the compiled ops; reference: plain PyTorch; auto: fused where available "
                   + from_preset.format("model.backend"))
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (options that would change the run "
                        "are refused; --epochs, --backend and train.cuda_graph may change)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run --out holds (without it, training into another run is refused)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none anyway where stderr is not a terminal; the line per epoch stays)")
    t.add_argument("--log", action="append", default=[], choices=LOGGERS,
                   help="also write the metrics as RUN/metrics.csv (csv) or TensorBoard scalars in RUN/tensorboard "
                        "(tensorboard, needs the tensorboard package); repeatable")
    t.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes (launches torchrun; train.batch_size stays the global batch)")
    t.add_argument("--no-sync-stats", action="store_true",
                   help="with several processes: batch statistics of each process's own rows (cheaper)")
    t.set_defaults(func=cmd_train)

    for name, func, text in (("eval", cmd_eval, "metrics of a trained run on a split"),
                             ("embed", cmd_embed, "write the representations of one split of a data source (the "
                                                  "rows that fall in that split only) to an .npz file; for every "
                                                  "row of new data, use encode")):
        e = command(name, text)
        e.add_argument("run", help="run folder written by train")
        e.add_argument("--data", help="data source (default: the one the run was trained on)")
        e.add_argument("--split", choices=SPLITS, default="test", help="which split")
        e.add_argument("--checkpoint", choices=["best", "last"], default="best",
                       help="best (by the run's train.select on validation) or last")
        if name == "eval":
            e.add_argument("--json", action="store_true", help="print one JSON object")
        else:
            e.add_argument("--out", required=True, help="output .npz (float32 arrays x and y)")
            e.add_argument("--projected", action="store_true",
                           help="the CCA-projected representations (the run's projection.npz for the best "
                                "checkpoint, else fitted on the training split) instead of the raw ones")
        e.set_defaults(func=func)

    n = command("encode", "write the representations of new rows (every row of each file, in order, through the "
                          "preprocessing the run fitted) to an .npz file")
    n.add_argument("run", help="run folder written by train")
    n.add_argument("--x", metavar="FILE", help="rows of the x view: .npy, .npz (array x, or its only array) or an IDX "
                                               "image file (the left halves)")
    n.add_argument("--y", metavar="FILE", help="rows of the y view, as --x (an IDX image file: the right halves)")
    n.add_argument("--out", required=True, help="output .npz (float32 arrays x and/or y)")
    n.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="best (by the run's train.select on validation) or last")
    n.add_argument("--projected", action="store_true",
                   help="the CCA-projected representations (the run's projection.npz for the best checkpoint, "
                        "else fitted on the training split of the run's data) instead of the raw ones")
    n.set_defaults(func=cmd_encode)

    c = command("cca", "the linear CCA baseline: the same metrics, same data and preprocessing")
    c.add_argument("--data", required=True, help="data directory, .npz file, or 'digits'")
    c.add_argument("--preset", default="mnist", help="whose [data] preprocessing to apply: " + preset_help)
    c.add_argument("--config", action="append", default=[], metavar="FILE", help=config_help)
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=set_help)
    c.add_argument("--dims", type=int, default=50, help="canonical dimensions kept")
    c.add_argument("--split", choices=SPLITS, default="test", help="which split")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_cca)

    d = command("demo", "train on the embedded digits halves; compare with linear CCA")
    d.add_argument("--out", default="runs/demo", help="run folder")
    d.add_argument("--epochs", type=int, help="training epochs " + from_preset.format("train.epochs (digits: 30)"))
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    for s in sub.choices.values():
        s.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device == "auto":
        args.device = default_device()
    from .train import NonFiniteLoss

    # Expected failures (bad values, files, paths, permissions, no space, a run folder in use) end in
    # one line; anything else is a bug and keeps its traceback.
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        check_device(args.device)
        return args.func(args)
    except (ValueError, NonFiniteLoss, OSError) as err:
        print(f"twoway-fast {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: Exception) -> str:
    text = str(err) if not isinstance(err, OSError) or not err.strerror else (
        f"{err.strerror}: {err.filename}" if err.filename else err.strerror)
    return " ".join(text.split())
