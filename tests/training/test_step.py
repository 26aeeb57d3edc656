"""The jitted train step: compiles once, descends, keeps an exact EMA of the weights."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dgm import training
from tests.training._toy import CONFIG, Net, loss


def _batch():
    x = jax.random.normal(jax.random.key(0), (16, 3), jnp.float32)
    return x, {"kl_weight": jnp.asarray(1.0, jnp.float32)}


def test_train_step_compiles_once_and_descends(x64):
    model = Net(key=jax.random.key(1))
    opt = training.make_optimizer(CONFIG)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    step = training.make_train_step(eqx.debug.assert_max_traces(loss, max_traces=1), opt)
    losses = []
    for i in range(60):
        model, opt_state, m = step(model, opt_state, _batch(), jax.random.key(i))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.05 * losses[0]


def test_trainer_step_compiles_once(x64):
    counted = eqx.debug.assert_max_traces(loss, max_traces=1)
    trainer = training.Trainer(counted, training.make_optimizer(CONFIG), ema_decay=0.9)
    state = trainer.init(Net(key=jax.random.key(1)))
    for i in range(3):
        state, _ = trainer.step(state, _batch(), jax.random.key(i))
    assert state.model.layer.weight.dtype == jnp.float32


def test_ema_equals_hand_computed_average(x64):
    """θ̄_0 = θ_0, θ̄_t = d θ̄_{t-1} + (1 − d) θ_t over the models of a plain trainer."""
    decay, num_steps = 0.8, 5
    optimizer = training.make_optimizer(CONFIG)
    plain = training.Trainer(loss, optimizer)
    averaging = training.Trainer(loss, optimizer, ema_decay=decay)
    state = plain.init(Net(key=jax.random.key(1)))
    avg_state = averaging.init(state.model)
    expected = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.model)]
    for i in range(num_steps):
        state, _ = plain.step(state, _batch(), jax.random.key(i))
        avg_state, _ = averaging.step(avg_state, _batch(), jax.random.key(i))
        thetas = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.model)]
        expected = [decay * e + (1 - decay) * t for e, t in zip(expected, thetas, strict=True)]
    got = jax.tree.leaves(avg_state.averaged)
    for e, g in zip(expected, got, strict=True):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-5, atol=1e-6)
    # the average lags the model, and the model itself follows the plain trainer
    assert not np.allclose(np.asarray(got[0]), np.asarray(state.model.layer.weight))
    np.testing.assert_allclose(avg_state.model.layer.weight, state.model.layer.weight, rtol=1e-6)


def test_ema_decay_is_validated():
    with pytest.raises(ValueError, match=r"`ema_decay` must be None or in \[0, 1\); got 1.0"):
        training.Trainer(loss, training.make_optimizer(CONFIG), ema_decay=1.0)


def test_learning_rate_schedule_in_the_optimizer():
    """A zero learning rate after step 0 freezes the model after one update."""
    schedule = optax.piecewise_constant_schedule(0.05, {1: 0.0})
    trainer = training.Trainer(loss, training.make_optimizer(CONFIG, schedule))
    state = trainer.init(Net(key=jax.random.key(1)))
    weights = []
    for i in range(3):
        state, _ = trainer.step(state, _batch(), jax.random.key(i))
        weights.append(np.asarray(state.model.layer.weight))
    assert not np.array_equal(weights[0], np.asarray(Net(key=jax.random.key(1)).layer.weight))
    np.testing.assert_array_equal(weights[0], weights[2])
    assert schedule(5) == 0.0


def test_l2_penalty_skips_boolean_masks():
    from dgm.nn.autoregressive import MaskedDense

    layer = MaskedDense(2, 2, weight_norm=False, key=jax.random.key(0))
    expected = float(jnp.sum(layer.weight**2) + jnp.sum(layer.bias**2))
    assert float(training.l2_penalty(layer)) == pytest.approx(expected)


def _one_update(trainer, batch, key):
    state, metrics = trainer.step(trainer.init(Net(key=jax.random.key(1))), batch, key)
    # the model to evaluate and keep is on one device, as a reloaded checkpoint is
    assert trainer.eval_model(state).layer.weight.devices() == {jax.local_devices()[0]}
    return state.model.layer.weight, float(metrics["loss"])


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs two host devices")
def test_split_batch_averages_each_devices_loss_and_gradient():
    """With ``split_batch`` each device's slice gets the key folded with its index, and the
    update is the one of the average of the slices' losses and gradients."""
    optimizer = training.make_optimizer(CONFIG)
    (x, hyper), key = _batch(), jax.random.key(7)
    n = jax.local_device_count()
    rows = x.shape[0] // n
    slices = [
        eqx.filter_value_and_grad(loss, has_aux=True)(
            Net(key=jax.random.key(1)),
            (x[i * rows : (i + 1) * rows], hyper),
            jax.random.fold_in(key, i),
        )
        for i in range(n)
    ]
    mean_loss = np.mean([float(value) for (value, _), _ in slices])
    grads = jax.tree.map(lambda *g: sum(g) / n, *[g for _, g in slices])
    params = eqx.filter(Net(key=jax.random.key(1)), eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):  # Optax's int32 step count
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
    expected = eqx.apply_updates(Net(key=jax.random.key(1)), updates).layer.weight

    weight, value = _one_update(
        training.Trainer(loss, optimizer, split_batch=True), (x, hyper), key
    )
    assert value == pytest.approx(mean_loss, rel=1e-6)
    np.testing.assert_allclose(weight, expected, rtol=1e-6, atol=1e-7)
    # not the undivided batch's update (whose one key draws other noise)
    plain_weight, plain_value = _one_update(training.Trainer(loss, optimizer), (x, hyper), key)
    assert plain_value != pytest.approx(mean_loss, rel=1e-6)


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs two host devices")
def test_split_batch_runs_an_indivisible_batch_undivided():
    optimizer = training.make_optimizer(CONFIG)
    x, hyper = _batch()
    batch, key = (x[:15], hyper), jax.random.key(3)
    split = _one_update(training.Trainer(loss, optimizer, split_batch=True), batch, key)
    plain = _one_update(training.Trainer(loss, optimizer), batch, key)
    np.testing.assert_array_equal(split[0], plain[0])
    assert split[1] == plain[1]


@pytest.mark.parametrize(
    "bad, got",
    [
        (lambda m, b, k: loss(m, b, k)[0], "got ShapeDtypeStruct\\(shape=\\(\\)"),  # no metrics
        (lambda m, b, k: (jnp.ones(2), {}), "got \\(ShapeDtypeStruct\\(shape=\\(2,\\)"),
        (lambda m, b, k: (loss(m, b, k)[0], [1.0]), "got \\(ShapeDtypeStruct"),
    ],
)
def test_a_loss_of_the_wrong_form_is_refused_naming_what_came_back(bad, got):
    trainer = training.Trainer(bad, training.make_optimizer(CONFIG))
    state = trainer.init(Net(key=jax.random.key(1)))
    with pytest.raises(
        ValueError, match="must return \\(a scalar loss, a dict of metrics\\); " + got
    ):
        trainer.step(state, _batch(), jax.random.key(0))


def test_fit_and_loader_arguments_are_checked_by_name():
    with pytest.raises(ValueError, match="`batch_size` must be a positive int; got 0"):
        training.ArrayLoader(np.zeros((8, 3), np.float32), 0)
    loader = training.ArrayLoader(np.zeros((8, 3), np.float32), 4)
    trainer = training.Trainer(loss, training.make_optimizer(CONFIG))
    with pytest.raises(ValueError, match="`key` must be one PRNG key"):
        training.fit(Net(key=jax.random.key(1)), trainer, loader, CONFIG, key=0)
