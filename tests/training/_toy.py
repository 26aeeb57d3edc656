"""A tiny regression model and the fit helper shared by the training tests."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from dgm import training


class Net(eqx.Module):
    layer: eqx.nn.Linear

    def __init__(self, *, key):
        self.layer = eqx.nn.Linear(3, 1, dtype=jnp.float32, key=key)


def loss(model, batch, key):
    x, hyper = batch
    noise = 0.01 * jax.random.normal(key, x.shape[:1], jnp.float32)
    pred = jax.vmap(model.layer)(x)[:, 0] + noise
    target = x[:, 0] - 2.0 * x[:, 1]
    return jnp.mean((pred - target) ** 2) * hyper["kl_weight"], {}


CONFIG = training.TrainConfig(
    num_epochs=2, batch_size=4, learning_rate=0.05, anneal_steps=5, eval_every=1, l2=0.0
)


def data():
    return jax.random.normal(jax.random.key(0), (18, 3), jnp.float32)


def fit(out, num_epochs, *, resume=False, config=CONFIG, fingerprint="a", loggers=(), **kwargs):
    """The toy fit writing ``out/checkpoints/train.eqx`` (the layout of the DMM runs)."""
    config = dataclasses.replace(config, num_epochs=num_epochs)
    return training.fit(
        Net(key=jax.random.key(1)),
        kwargs.pop("trainer", loss),
        training.ArrayLoader(data(), config.batch_size),
        config,
        key=jax.random.key(2),
        eval_fn=kwargs.pop("eval_fn", lambda m, k: float(jnp.sum(m.layer.weight**2))),
        checkpoint=out / "checkpoints" / "train.eqx",
        resume=resume,
        loggers=loggers,
        fingerprint=fingerprint,
        schedules=kwargs.pop("schedules", training.kl_schedule(config)),
        **kwargs,
    )


def assert_trees_equal(a, b):
    import numpy as np

    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
