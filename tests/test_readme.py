"""The README's first example, as a user runs it: no warning, and the right answer."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(after: str) -> str:
    text = README.read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(after) :], re.S).group(1)


def _exact_factor_mean() -> float:
    """E[exp(u1) | u0 exp(u1) + 0.1 u2 = 1.5] by quadrature over (u0, u1): the noise input
    integrates out to a Gaussian likelihood of width 0.1."""
    g = np.linspace(-7.0, 7.0, 2801)
    u0, u1 = np.meshgrid(g, g, indexing="ij")
    log_w = -0.5 * (u0**2 + u1**2) - 0.5 * ((1.5 - u0 * np.exp(u1)) / 0.1) ** 2
    w = np.exp(log_w - log_w.max())
    return float((w * np.exp(u1)).sum() / w.sum())


def test_condition_your_own_generator_example():
    """Runs the block under "Condition your own generator" (pytest turns any warning, such as
    a ChainDisagreementWarning, into an error); its printed mean is within 5 Monte Carlo
    standard errors (bulk ESS) of the quadrature value, and nearly every step is accepted."""
    from dgm import diagnostics

    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(_block("## Condition your own generator"), scope)
    printed_mean, accept = map(float, out.getvalue().split())
    draws = scope["idata"].posterior["factor"].values
    assert printed_mean == float(draws.mean()) and accept > 0.9
    se = draws.std() / np.sqrt(diagnostics.ess(draws))
    assert abs(printed_mean - _exact_factor_mean()) < 5 * se, (printed_mean, se)
