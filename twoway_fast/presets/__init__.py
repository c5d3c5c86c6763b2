"""The presets (docs/method.md#presets) as TOML files in this folder, each in two forms: the default, tuned so
the representation does not collapse, and `faithful=True`, the original's choices exactly (the
[faithful.*] tables override the defaults)."""
from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ..config_types import check_value, hints_of

SECTIONS = ("model", "loss", "train", "data")
BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")  # --set train.optimizer=Adam


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

    def merged(self, table: dict[str, dict[str, Any]], source: str = "overrides") -> "Preset":
        """This preset with `table`'s sections laid over it ({"loss": {"lh": 2.0}, ...}), checked."""
        unknown = set(table) - set(SECTIONS)
        if unknown:
            raise ValueError(f"{source}: unknown sections {sorted(unknown)}; expected {list(SECTIONS)}")
        sections = {s: getattr(self, s) | dict(table.get(s, {})) for s in SECTIONS}
        merged = Preset(self.name, self.faithful, **sections)
        merged.check(source)
        return merged

    def check(self, source: str = "preset") -> None:
        """Every key must be a parameter of what its section configures, its value of that parameter's
        annotated type."""
        for section, hints in key_types().items():
            values = getattr(self, section)
            if not isinstance(values, dict):
                raise ValueError(f"{source}: [{section}] must be a table, got {values!r}")
            unknown = set(values) - set(hints)
            if unknown:
                raise ValueError(f"{source}: unknown {section} keys {sorted(unknown)}; allowed: {sorted(hints)}")
            for key, value in values.items():
                check_value(f"{section}.{key}", value, hints[key], source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> "Preset":
        return cls(**table)


def key_types() -> dict[str, dict[str, Any]]:
    """Per section, each allowed key and its annotated type."""
    from ..config import DataConfig, TrainConfig
    from ..loss import TwoWayLoss
    from ..loss_terms import COEFFICIENTS
    from ..model import TwoWayNet

    def params(fn, skip):
        hints = hints_of(fn)
        return {k: hints.get(k, Any) for k in inspect.signature(fn).parameters if k not in skip}

    loss = params(TwoWayLoss, ("model", "coefficients")) | {name: float for name in COEFFICIENTS}
    return {"model": params(TwoWayNet, ("dx", "dy")), "loss": loss,
            "train": hints_of(TrainConfig), "data": hints_of(DataConfig)}


def parse_override(text: str) -> dict[str, dict[str, Any]]:
    """"section.key=value" (value in TOML syntax; a bare word is a string) -> {section: {key: value}}."""
    key, sep, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. loss.lh=2.0")
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as err:
        if not BARE_WORD.fullmatch(value):  # meant as TOML ([1, 2, "a"...) but malformed
            raise ValueError(f"override {text!r}: invalid TOML value {value!r} ({err})") from None
        parsed = value  # a bare word is a string; Preset.check refuses it where a string does not belong
    return {section: {name: parsed}}


def resolve(name_or_file: str, faithful: bool = False, files: Sequence[str | Path] = (),
            overrides: Sequence[str] = ()) -> Preset:
    """A packaged preset (or a preset TOML file), then each user TOML file, then each
    section.key=value override, later ones winning."""
    is_file = name_or_file.endswith(".toml")
    preset = load(name_or_file, faithful) if is_file else get(name_or_file, faithful)
    preset.check(name_or_file)
    for path in files:
        table = load(path, faithful)
        preset = preset.merged({s: getattr(table, s) for s in SECTIONS}, str(path))
    for text in overrides:
        preset = preset.merged(parse_override(text), f"override {text!r}")
    return preset


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
