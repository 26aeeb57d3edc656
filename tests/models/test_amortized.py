"""``AmortizedPosterior``: the encoder + IAF ``q(z | y)`` of ``dgm.amortize``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.models.amortized import AmortizedPosterior


def test_density_of_a_given_point_equals_the_sampled_one():
    """``log_prob`` (flow inverted) equals the ``log q`` returned with each draw."""
    q = AmortizedPosterior(3, 4, num_flows=2, key=jax.random.key(0))
    y = jnp.arange(4.0)
    for k in range(3):
        z, log_q = q.sample_and_log_prob(y, key=jax.random.key(k))
        np.testing.assert_allclose(q.log_prob(z, y), log_q, rtol=1e-5, atol=1e-5)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="`context_size` must be a positive int"):
        AmortizedPosterior(2, 3, context_size=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`latent_dim` must be a positive int"):
        AmortizedPosterior(0, 3, key=jax.random.key(0))
