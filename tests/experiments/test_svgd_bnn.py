"""svgd-bnn: the paper's splits and the original's evaluation (``python/bayesian_nn.py``)."""

import jax
import numpy as np
import pytest

from dgm.experiments import svgd_bnn as bnn

# `random.seed(s); p = range(506); random.shuffle(p)` printed by Python 2.7.18:
# seed -> (first 8, last 5, sum of the last 51 = the test rows)
PY27_SHUFFLES = {
    0: ([449, 219, 306, 191, 303, 393, 448, 157], [256, 130, 211, 382, 427], 14786),
    1: ([478, 35, 145, 317, 162, 221, 71, 382], [248, 128, 384, 427, 67], 12160),
    19: ([374, 113, 397, 46, 444, 457, 232, 293], [197, 257, 262, 396, 342], 12159),
}


@pytest.mark.parametrize("seed", sorted(PY27_SHUFFLES))
def test_reference_permutation_is_python27_shuffle(seed):
    head, tail, test_sum = PY27_SHUFFLES[seed]
    perm = bnn.reference_permutation(506, seed)
    assert perm[:8].tolist() == head and perm[-5:].tolist() == tail
    assert perm[455:].sum() == test_sum
    assert np.array_equal(np.sort(perm), np.arange(506))


def test_split_permutation_modes():
    key = jax.random.key(0)
    ref = bnn.split_permutation(bnn.Config(split_source="reference"), key, 19, 506)
    assert np.array_equal(ref, bnn.reference_permutation(506, 19))
    rnd = bnn.split_permutation(bnn.Config(), key, 19, 506)
    assert np.array_equal(rnd, np.asarray(jax.random.permutation(key, 506)))
    with pytest.raises(ValueError, match="`split_source` must be one of"):
        bnn.Config(split_source="pbp")


def test_split_sizes_as_the_original():
    x, y = np.arange(506.0)[:, None], np.arange(506.0)
    xtr, ytr, xdev, ydev, xte, yte = bnn.split_data(x, y, np.arange(506), 0.1)
    # train round(0.9 * 506) = 455, dev np.round(45.5) = 46 (the last rows), test 51
    assert (len(ytr), len(ydev), len(yte)) == (409, 46, 51)
    assert ydev[0] == 409 and yte[0] == 455


def _original_evaluation(pred_dev, y_dev, pred_test, y_test, log_gamma):
    """A transcription of the original's dev-set step and ``evaluation`` (NumPy, loops)."""
    log_gamma = log_gamma.copy()

    def f_log_lik(lg, pred):
        gamma = np.exp(lg)
        dens = np.sqrt(gamma) / np.sqrt(2 * np.pi) * np.exp(-((pred - y_dev) ** 2 / 2) * gamma)
        return np.sum(np.log(dens))

    for i in range(len(log_gamma)):
        alt = -np.log(np.mean((pred_dev[i] - y_dev) ** 2))
        if f_log_lik(alt, pred_dev[i]) > f_log_lik(log_gamma[i], pred_dev[i]):
            log_gamma[i] = alt
    g = np.exp(log_gamma)[:, None]
    prob = np.sqrt(g) / np.sqrt(2 * np.pi) * np.exp(-((pred_test - y_test) ** 2 / 2) * g)
    rmse = np.sqrt(np.mean((pred_test.mean(0) - y_test) ** 2))
    return rmse, np.mean(np.log(np.mean(prob, axis=0))), log_gamma


def test_evaluate_matches_the_original():
    rng = np.random.default_rng(0)
    y_dev, y_test = rng.normal(20, 9, 46), rng.normal(20, 9, 51)
    offsets = rng.normal(0, 2, (5, 1))  # particles that disagree, so mixture != average
    pred_dev = y_dev + offsets + rng.normal(0, 3, (5, 46))
    pred_test = y_test + offsets + rng.normal(0, 3, (5, 51))
    # the alternative is the dev-set maximum-likelihood gamma, so it replaces every gamma
    # but one that equals it already (particle 0)
    log_gamma = np.array([-np.log(np.mean((pred_dev[0] - y_dev) ** 2)), 2.0, 1.5, 2.5, -2.3])
    rmse, loglik, kept = _original_evaluation(pred_dev, y_dev, pred_test, y_test, log_gamma)
    m = bnn.evaluate(pred_dev, y_dev, pred_test, y_test, log_gamma)
    assert m["dev_gamma_replaced"] == int(np.sum(kept != log_gamma)) == 4
    np.testing.assert_allclose([m["rmse"], m["loglik"]], [rmse, loglik], rtol=1e-12)
    # the mean of per-particle log-liks is a different (lower) number
    per_particle = bnn.gaussian_loglik(pred_test, y_test[None, :], kept[:, None]).mean()
    assert per_particle < m["loglik"] - 0.01


def test_cli_flags_set_split_source_and_count():
    """``--split-source`` (a hyphenated flag) and ``--splits`` reach their own fields."""
    import argparse

    from dgm import cli

    args = argparse.Namespace(name="svgd-bnn", smoke=True, preset=None, set=[])
    _, _, config = cli._resolve(args, ["--split-source", "reference", "--splits", "3"])
    assert (config.split_source, config.num_splits) == ("reference", 3)
    with pytest.raises(ValueError, match="`num_splits` expects an int; got 'reference'"):
        cli._resolve(args, ["--splits", "reference"])


def test_run_averages_the_splits_with_their_standard_errors(tmp_path, monkeypatch):
    """Three fabricated splits: the means, and standard errors s / √n (ddof 1) of RMSE and
    log-lik. Catches (audit plant): the standard deviation reported as the error."""
    from dgm.runs import RunContext

    splits = iter([(3.0, -2.4), (2.5, -2.6), (3.4, -2.5)])

    def run_split(*args, **kwargs):
        rmse, ll = next(splits)
        return {"rmse": rmse, "loglik": ll, "ms_per_iter": 1.0, "status": "completed"}

    monkeypatch.setattr(bnn.svgd_data, "load_boston", lambda path: (None, None))
    monkeypatch.setattr(bnn, "run_split", run_split)
    m = bnn.run(bnn.Config(num_splits=3), jax.random.key(0), RunContext(tmp_path))
    rmse, ll = np.array([3.0, 2.5, 3.4]), np.array([-2.4, -2.6, -2.5])
    assert m["rmse_mean"] == pytest.approx(rmse.mean()) and m["loglik_mean"] == pytest.approx(-2.5)
    assert m["rmse_se"] == pytest.approx(np.std(rmse, ddof=1) / np.sqrt(3))
    assert m["loglik_se"] == pytest.approx(np.std(ll, ddof=1) / np.sqrt(3))
