"""The loss's one description, in C++ (csrc/loss_terms.h, host and device) and in Python
(twoway_fast/loss_terms.py, loss_variants.py), read against each other: the terms in one order, each
term's coefficient, the coefficients' order, the variants' bits, the log mid-way eps and the uniformity's
constants; and the total summed from the terms as the kernels sum it."""
import re
from pathlib import Path

import pytest
import torch

from twoway_fast import loss_terms, loss_variants

HEADER = (Path(__file__).resolve().parents[1] / "csrc" / "loss_terms.h").read_text()


def enum(namespace: str) -> list[str]:
    """The names of `namespace`'s enum in csrc/loss_terms.h, kCount left out."""
    body = re.search(rf"namespace {namespace} {{\s*enum : \w+ {{(.*?)}};", HEADER, re.S).group(1)
    names = [re.match(r"\s*(k\w+)", part).group(1) for part in body.split(",") if part.strip()]
    return [n for n in names if n not in ("kCount", "kAll")]


def snake(name: str) -> str:
    """kReconX -> recon_x."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name[1:]).lower()


def test_terms_and_coefficients_match_the_header():
    assert [snake(n) for n in enum("term")] == list(loss_terms.LossTerms._fields)
    assert [snake(n) for n in enum("coefficient")] == list(loss_terms.COEFFICIENTS)
    switch = re.search(r"coefficient_of\(int t\) {\s*switch \(t\) {(.*?)}\n}", HEADER, re.S).group(1)
    of, pending = {}, []
    for case, target in re.findall(r"case term::(k\w+):(?:\s*return coefficient::(k\w+);)?", switch):
        pending.append(snake(case))
        if target:
            of.update({t: snake(target) for t in pending})
            pending = []
    default = re.search(r"default: return coefficient::(k\w+);", switch).group(1)
    of.update({t: snake(default) for t in loss_terms.COEFFICIENT_OF if t not in of})
    assert of == loss_terms.COEFFICIENT_OF


def test_variant_bits_and_eps_match_the_header():
    bits = dict(re.findall(r"(k\w+) = (\d+),", re.search(r"namespace option {(.*?)}", HEADER, re.S).group(1)))
    assert int(bits["kMidwayLog"]) == loss_variants.MIDWAY_LOG
    assert int(bits["kCorrelation"]) == loss_variants.CORRELATION
    assert int(bits["kBeforeDropout"]) == loss_variants.BEFORE_DROPOUT
    assert int(bits["kAll"]) == loss_variants.loss_options("log", "correlation", "before_dropout")
    eps = re.search(r"kMidwayLogEps = ([\d.e+-]+);", HEADER).group(1)
    assert float(eps) == loss_variants.MIDWAY_LOG_EPS
    for constant, name in (("kUniformityTemperature", "UNIFORMITY_TEMPERATURE"), ("kUniformityEps", "UNIFORMITY_EPS")):
        assert float(re.search(rf"{constant} = ([\d.e+-]+);", HEADER).group(1)) == getattr(loss_terms, name), name


def test_total_is_each_term_times_its_coefficient_in_term_order():
    terms = {name: torch.tensor(float(i + 1), dtype=torch.float64)
             for i, name in enumerate(loss_terms.COEFFICIENT_OF)}
    c = dict(lx=0.5, lh=3.0)
    got = loss_terms.with_total(terms, c)
    full = loss_terms.coefficients_of(c)
    want = sum(full[loss_terms.COEFFICIENT_OF[n]] * v.item() for n, v in terms.items())
    assert got.total.item() == want and got.midway is terms["midway"]


def test_with_terms_adds_the_terms_left_out_of_the_total():
    terms = {name: torch.tensor(float(i + 1), dtype=torch.float64)
             for i, name in enumerate(loss_terms.COEFFICIENT_OF)}
    c = dict(lc=2.0, lh=3.0)
    local = loss_terms.with_total(terms, loss_terms.without(c, ["decorr_x", "decorr_y"]))
    computed = {"decorr_x": torch.tensor(10.0, dtype=torch.float64), "decorr_y": torch.tensor(20.0,
                                                                                          dtype=torch.float64)}
    got = loss_terms.with_terms(local, computed, c)
    assert got.decorr_x.item() == 10.0
    assert got.total.item() == pytest.approx(loss_terms.with_total(terms | computed, c).total.item())
    with pytest.raises(ValueError, match="also weigh"):
        loss_terms.without(c, ["decorr_x"])  # lc weighs decorr_y too


def test_unknown_coefficient_is_refused():
    with pytest.raises(TypeError, match=r"unknown loss coefficients \['lq'\]"):
        loss_terms.coefficients_of(dict(lq=1.0))
