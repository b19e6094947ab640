"""The per-dtype tolerance tables: what a bound means, and that the README quotes the tables the tests use."""
from pathlib import Path

import torch

from c2w_fast.ops._tolerance import Tolerance
from c2w_fast.ops.conv_norm_act import TOLERANCES
from c2w_fast.ops.losses import GRAD_TOLERANCES, VALUE_TOLERANCES


def test_tolerance_counts_elements_outside_the_bound_and_nan_mismatches():
    tolerance = VALUE_TOLERANCES[torch.float32]
    reference = torch.tensor([1.0, -2.0, 4.0])
    assert tolerance.violations(reference * (1 + tolerance.rtol / 2), reference) == 0
    assert tolerance.violations(reference + torch.tensor([0.0, 0.0, 1e-3]), reference) == 1
    assert tolerance.violations(torch.tensor([1.0, float("nan"), 4.0]), reference) == 1



def test_the_absolute_term_scales_with_the_largest_reference_magnitude():
    tolerance = Tolerance(rtol=0.0, atol=1e-3)
    reference = torch.tensor([0.0, -100.0])  # bound: 1e-3 * 100 = 0.1 on every element
    assert tolerance.violations(torch.tensor([0.05, -100.0]), reference) == 0
    assert tolerance.violations(torch.tensor([0.15, -100.0]), reference) == 1


def test_an_exact_match_is_no_violation_even_where_the_bound_is_zero():
    zeros = torch.zeros(3)
    assert Tolerance(rtol=1e-6, atol=1e-6).violations(zeros, zeros) == 0


def test_readme_quotes_the_tolerance_tables():
    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    for label, tables in (("conv_norm_act output and all gradients", TOLERANCES), ("loss value", VALUE_TOLERANCES),
                          ("loss gradient", GRAD_TOLERANCES)):
        cells = " | ".join(f"{tables[d].rtol:.0e} / {tables[d].atol:.0e}" for d in dtypes)
        assert f"| {label} | {cells} |" in readme, label
