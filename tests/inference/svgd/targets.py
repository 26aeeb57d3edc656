"""Shared by the SVGD tests: a correlated Gaussian target, its accuracy check, and the
published update restated in NumPy."""

import jax.numpy as jnp
import numpy as np

# 2-d correlated Gaussian with unequal scales (sds 3 and 0.5, correlation 0.8)
SD = np.array([3.0, 0.5])
RHO = 0.8
COV = np.array([[SD[0] ** 2, RHO * SD[0] * SD[1]], [RHO * SD[0] * SD[1], SD[1] ** 2]])
MU = np.array([1.0, -2.0])
PREC = np.linalg.inv(COV)

# the accuracy test's tolerances (200 particles): mean within 0.1 sd, sds within 5 %,
# correlation within 0.02; see test_driver.test_gaussian_moments_within_fraction_of_sd
MEAN_TOL, SD_TOL, CORR_TOL = 0.1, 0.05, 0.02


def gauss_logp(x):
    z = x - jnp.asarray(MU, x.dtype)
    return -0.5 * z @ jnp.asarray(PREC, x.dtype) @ z


def gauss_grad(x):
    return -(x - jnp.asarray(MU, x.dtype)) @ jnp.asarray(PREC, x.dtype)


def moment_errors(x):
    """Mean error in sds, relative sd error, absolute correlation error."""
    mean_err = np.abs(x.mean(0) - MU) / SD
    sd_err = np.abs(x.std(0, ddof=1) - SD) / SD
    corr_err = abs(np.corrcoef(x.T)[0, 1] - RHO)
    return mean_err, sd_err, corr_err


def is_accurate(x) -> bool:
    mean_err, sd_err, corr_err = moment_errors(x)
    return bool(np.all(mean_err < MEAN_TOL) and np.all(sd_err < SD_TOL) and corr_err < CORR_TOL)


def numpy_original(x0, dlnprob, n_iter, stepsize, alpha=0.9):
    """The published update (python/svgd.py), restated in NumPy."""
    from scipy.spatial.distance import pdist, squareform

    theta = np.copy(x0)
    fudge = 1e-6
    hist = 0.0
    for it in range(n_iter):
        lnpgrad = dlnprob(theta)
        pairwise = squareform(pdist(theta)) ** 2
        h = np.median(pairwise)
        h = np.sqrt(0.5 * h / np.log(theta.shape[0] + 1))
        kxy = np.exp(-pairwise / h**2 / 2)
        dxkxy = -np.matmul(kxy, theta)
        sumkxy = np.sum(kxy, axis=1)
        for i in range(theta.shape[1]):
            dxkxy[:, i] = dxkxy[:, i] + np.multiply(theta[:, i], sumkxy)
        dxkxy = dxkxy / (h**2)
        grad_theta = (np.matmul(kxy, lnpgrad) + dxkxy) / x0.shape[0]
        if it == 0:
            hist = hist + grad_theta**2
        else:
            hist = alpha * hist + (1 - alpha) * (grad_theta**2)
        theta = theta + stepsize * grad_theta / (fudge + np.sqrt(hist))
    return theta
