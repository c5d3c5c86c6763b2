"""The presets of SPEC section 3 as TOML files in this folder, each in two forms: the default, tuned so
the representation does not collapse, and `faithful=True`, the original's choices exactly (the
[faithful.*] tables override the defaults)."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

SECTIONS = ("model", "loss", "train", "data")


@dataclass(frozen=True)
class Preset:
    name: str
    faithful: bool
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def build_model(self, dx: int, dy: int, **overrides):
        from ..model import TwoWayNet

        return TwoWayNet(dx, dy, **(self.model | overrides))

    def build_loss(self, model, **overrides):
        from ..loss import TwoWayLoss

        return TwoWayLoss(model, **(self.loss | overrides))


def names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".toml"))


def _from_toml(name: str, text: str, source: str, faithful: bool) -> Preset:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{source}: invalid TOML: {err}") from err
    unknown = set(table) - {*SECTIONS, "faithful"}
    if unknown:
        raise ValueError(f"{source}: unknown sections {sorted(unknown)}; expected {list(SECTIONS)} and faithful")
    sections = {s: dict(table.get(s, {})) for s in SECTIONS}
    if faithful:
        for s, values in table.get("faithful", {}).items():
            if s not in SECTIONS:
                raise ValueError(f"{source}: unknown section faithful.{s}")
            sections[s].update(values)
    return Preset(name, faithful, **sections)


def get(name: str, faithful: bool = False) -> Preset:
    """A packaged preset by name: mnist, xrmb, flickr8k, flickr30k, coco."""
    if name not in names():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(names())}")
    text = resources.files(__name__).joinpath(f"{name}.toml").read_text()
    return _from_toml(name, text, f"preset {name}", faithful)


def load(path: str | Path, faithful: bool = False) -> Preset:
    """A preset from a user TOML file with the same sections."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read preset file {path}: {err.strerror}") from err
    return _from_toml(path.stem, text, str(path), faithful)
