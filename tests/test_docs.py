"""The documentation a user reads: it runs as written, its links resolve, and it matches the code."""
import re
import subprocess
from pathlib import Path

import pytest
import torch

from twoway_fast import presets

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "docs" / "method.md"


def tracked_text_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    suffixes = {".py", ".md", ".toml", ".cpp", ".h", ".cu", ".cuh", ".txt", ".cff", ".in", ".sh"}
    return [ROOT / f for f in files if Path(f).suffix in suffixes or f in ("Makefile", ".ci/run")]


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_snippet_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    torch.manual_seed(0)
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["zx"].shape == namespace["zy"].shape


def test_nothing_points_at_a_spec_the_package_does_not_ship():
    """Method references point at docs/method.md; no file cites the private SPEC or ../shared."""
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in tracked_text_files() if path.exists()
                 for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                 if re.search(r"\bSPEC\b|SPEC[-.]|\.\./shared|shared/SPEC", line) and path.name != "test_docs.py"]
    assert not offenders


def test_method_page_anchors_exist():
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", METHOD.read_text(), re.M)}
    links = [(path.relative_to(ROOT), anchor) for path in tracked_text_files() if path.exists()
             for anchor in re.findall(r"method\.md#([\w-]+)", path.read_text(errors="replace"))]
    links += [(METHOD.name, a) for a in re.findall(r"\]\(#([\w-]+)\)", METHOD.read_text())]
    assert links and not [(p, a) for p, a in links if a not in anchors]


def _number_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def presets_table() -> dict[str, list[str]]:
    section = METHOD.read_text().split("## Presets", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    return {row[0]: dict(zip(header, row)) for row in body}


@pytest.mark.parametrize("name", ["mnist", "xrmb", "flickr8k", "flickr30k", "coco", "digits"])
def test_method_page_presets_table_matches_the_preset_files(name):
    row, preset = presets_table()[name], presets.get(name)
    model, loss, train = preset.model, preset.loss, preset.train
    if row["hidden"] != "as flickr30k":
        assert _number_list(row["hidden"].split(";")[0]) == model["hidden"]
    r = model.get("repr_layer", len(model["hidden"]) // 2)  # unset: TwoWayNet's middle position
    assert int(row["r"]) == r and row["order"] == model["order"]
    dropout = model["dropout"] if isinstance(model["dropout"], list) else [model["dropout"]]
    assert _number_list(row["dropout"]) == dropout
    assert float(row["bn_eps"]) == model["bn_eps"]
    assert float(row["lh"]) == loss["lh"] and float(row["lc"]) == loss["lc"] and float(row["wd"]) == loss["wd"]
    assert row["decorrelation"] == f"{loss['decorrelation']}, {loss['decorrelation_input']}"
    optimizer, lr = row["optimizer, lr"].split(", ")
    assert optimizer == train["optimizer"] and float(lr) == train["lr"]
    assert int(row["epochs"]) == train["epochs"] and row["preprocess"] == preset.data["preprocess"]
    other = {f"lu {loss.get('lu', 0):g}": loss.get("lu", 0) != 0, "repr_affine false": model.get("repr_affine") is False,
             "repr_linear true": model.get("repr_linear") is True,
             "reconstruction mean": loss.get("reconstruction") == "mean", "midway log": loss.get("midway") == "log",
             "cosine rate": train.get("lr_schedule") == "cosine", "select r1": train.get("select") == "r1"}
    assert {k for k, v in other.items() if v} == {k for k in row["other"].split(", ") if k}


def test_every_preset_is_in_the_method_page():
    assert set(presets.names()) == set(presets_table())
