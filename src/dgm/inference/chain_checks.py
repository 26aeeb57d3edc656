"""After a constrained run: do the chains agree? (R-hat and per-chain mean log density.)

A chain that started in a secondary mode can stay there with high acceptance, and nothing
in its own statistics shows it. Across chains it shows: its rank-normalised split R-hat is
large and its mean log density sits many standard errors below the others'. Stan and
NumPyro users expect a warning then; :func:`annotate` takes the manifold log density
ℓ(u) = log N(u; 0, I) − ½ log det(J Jᵀ) at (thinned) draws (the sampler records it as
``sample_stats.lp``), runs
:func:`dgm.diagnostics.chain_agreement`, writes the result into the run's attributes and
warns with :class:`~dgm.diagnostics.ChainDisagreementWarning`.

References:
    Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding,
    and localization: an improved R-hat for assessing convergence of MCMC", Bayesian
    Analysis 16(2).
"""

import numpy as np

from dgm import diagnostics

MAX_CHECKED_DRAWS = 250  # per chain; longer runs are thinned (the thresholds' calibration)


def check(draws, lp, warn: bool = True) -> dict:
    """:func:`~dgm.diagnostics.chain_agreement` of ``(chains, draws, dim)`` draws and
    ℓ at them, ``lp`` ``(chains, draws)`` (the sampler's ``sample_stats.lp``), thinned
    to at most :data:`MAX_CHECKED_DRAWS` per chain, warning on disagreement."""
    draws = np.asarray(draws)
    thin = max(1, -(-draws.shape[1] // MAX_CHECKED_DRAWS))
    agreement = diagnostics.chain_agreement(draws[:, ::thin], np.asarray(lp)[:, ::thin])
    agreement["thin"] = thin
    agreement["stuck_chains"] = stuck = diagnostics.stuck_chains(draws)
    for message, category in (
        (diagnostics.stuck_warning(stuck, draws.shape[1]), diagnostics.StuckChainWarning),
        (diagnostics.chain_warning(agreement), diagnostics.ChainDisagreementWarning),
    ):
        if warn and message is not None:
            diagnostics.warn_caller(message, category)
    return agreement


def annotate(idata, batched: bool = False, warn: bool = True) -> list[dict]:
    """:func:`check` the ``u`` draws of ``idata`` (with their ``sample_stats.lp``) and
    record the result as posterior attributes: ``r_hat_max``, ``lp_chain_mean``,
    ``chains_disagree`` (a count), ``disagreeing_chains`` (comma-separated indices),
    ``chains_checked`` and ``chains_stuck`` (chains that rejected every proposal,
    with a :class:`~dgm.diagnostics.StuckChainWarning`). For a batch of observations
    (``u`` of dims ``(chain, draw, obs, u_dim)``) each observation is checked, and
    every attribute holds one value per observation (``disagreeing_chains`` separated
    by ``;``)."""
    u, lp = idata.posterior["u"].values, idata.sample_stats["lp"].values
    if not batched:
        agreement = check(u, lp, warn)
        idata.posterior.attrs.update(attrs_of(agreement))
        return [agreement]
    results = [check(u[:, :, i], lp[:, :, i], warn) for i in range(u.shape[2])]
    rows = [attrs_of(a) for a in results]
    idata.posterior.attrs.update(
        {
            "r_hat_max": np.array([r["r_hat_max"] for r in rows]),
            "lp_chain_mean": np.stack([r["lp_chain_mean"] for r in rows]).reshape(-1),
            "chains_disagree": np.array([r["chains_disagree"] for r in rows]),
            "disagreeing_chains": ";".join(r["disagreeing_chains"] for r in rows),
            "chains_checked": np.array([r["chains_checked"] for r in rows]),
            "chains_stuck": np.array([r["chains_stuck"] for r in rows]),
        }
    )
    return results


def attrs_of(agreement: dict) -> dict:
    """The netCDF-friendly run attributes of a :func:`chain_agreement` result."""
    bad = agreement["disagreeing_chains"]
    return {
        "r_hat_max": float(agreement["r_hat_max"]),
        "lp_chain_mean": np.asarray(agreement["lp_chain_mean"], np.float64),
        "chains_disagree": len(bad),
        "disagreeing_chains": ",".join(str(k) for k in bad),
        "chains_checked": int(agreement["checked"]),
        "chains_stuck": len(agreement["stuck_chains"]),
    }
