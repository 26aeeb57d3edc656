"""One IAF step at the spec's MNIST sizes: dgm vs NumPyro's and flowjax's IAFs, in one run.

    PYTHONPATH=src python benchmarks/bench_iaf.py --batches 16,1024 --repeats 20

Sizes (``/work/shared/specs/iaf.md`` §2.11, the MNIST branch): n_z = 32 latent variables,
n_h = 64 hidden units, depth_ar = 1 hidden AR layer, ELU, two outputs (m, s); dense form
(the peers have no convolutional IAF), no context (NumPyro's IAF takes none). Each
implementation is the same affine IAF map ``y = μ(x) + σ(x) ⊙ x``:

- dgm: ``IAFStep(ARMLP(32, (64,)), form="affine")`` (the code's form, weight-normalised);
- NumPyro: ``InverseAutoregressiveTransform(AutoregressiveNN(32, [64], nonlinearity=Elu))``;
- flowjax: ``MaskedAutoregressive(transformer=Affine(), dim=32, nn_width=64, nn_depth=1,
  nn_activation=elu)`` used as an IAF (its ``transform`` is the one-pass sampling direction).

Operations, on a batch (``vmap``), each one ``jit``: ``sample`` (ε → z and log q, one pass),
``log_prob`` (log q of a given z: an inversion of 32 passes), and the gradients of the batch
mean of each with respect to the flow's parameters (``grad_sample``, ``grad_log_prob``).
Implementations alternate call by call so that they see the same load. One JSON line per
(operation, batch, implementation) with median/min milliseconds and compile seconds, then one
``iaf_ratio`` line per (operation, batch): the faster peer's median over dgm's (> 1: dgm is
faster; the issue's target is >= 1.5). Then ``iaf_injit`` lines: the same operations run
``--inner`` times inside one jitted ``lax.scan`` (µs per step), so that per-call dispatch
(flattening an Equinox module's pytree alone cost about 8 µs a call, against 7 µs for
NumPyro's tuples: most of the batch-16 gap) is not what is timed; and ``iaf_injit_ratio``.
NumPyro samples with ``call_with_intermediates`` (one network pass; its
``log_abs_det_jacobian`` without them runs the network again, which XLA merged in a single
call but not inside the scan); dgm's density uses ``inverse_and_log_det`` (the solve's outputs
give the log-determinant). Last, ``iaf_conv`` lines: dgm's convolutional step as the VAE uses
it (no peer has one), at ``--conv-batch`` images.
"""

from dgm._runtime import configure_cpu

configure_cpu()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from dgm.nn.autoregressive import ARMLP, ARConvNet  # noqa: E402
from dgm.nn.flows import IAFStep  # noqa: E402

N_Z, N_H, DEPTH_AR = 32, 64, 1
LOG_2PI = float(jnp.log(2 * jnp.pi))


def _base_log_prob(eps):
    return -0.5 * jnp.sum(eps**2, axis=-1) - 0.5 * N_Z * LOG_2PI


def dgm_ops():
    """(params, sample_fn, log_prob_fn) with fn(params, batch) -> batch of log q."""
    step = IAFStep(ARMLP(N_Z, (N_H,) * DEPTH_AR, key=jax.random.key(0)), form="affine")
    params, static = eqx.partition(step, eqx.is_inexact_array)

    def sample(p, eps):
        s = eqx.combine(p, static)
        z, log_det = jax.vmap(s)(eps)
        return z, _base_log_prob(eps) - log_det

    def log_prob(p, z):
        s = eqx.combine(p, static)
        eps, log_det = jax.vmap(s.inverse_and_log_det)(z)  # the solve's outputs give log_det
        return _base_log_prob(eps) - log_det

    return params, sample, log_prob


def numpyro_ops():
    from jax.example_libraries import stax
    from numpyro.distributions.flows import InverseAutoregressiveTransform
    from numpyro.nn import AutoregressiveNN

    init, apply = AutoregressiveNN(N_Z, [N_H] * DEPTH_AR, nonlinearity=stax.Elu)
    _, params = init(jax.random.key(0), (N_Z,))

    def flow(p):
        return InverseAutoregressiveTransform(lambda x: apply(p, x))

    def sample(p, eps):  # one network pass: the log-scales ride along as intermediates
        t = flow(p)
        z, log_scale = t.call_with_intermediates(eps)
        return z, _base_log_prob(eps) - t.log_abs_det_jacobian(eps, z, log_scale)

    def log_prob(p, z):
        t = flow(p)
        eps = jax.vmap(t._inverse)(z)
        return _base_log_prob(eps) - t.log_abs_det_jacobian(eps, z).sum(-1)

    return params, sample, log_prob


def flowjax_ops():
    import paramax
    from flowjax.bijections import Affine, MaskedAutoregressive

    with jax.numpy_rank_promotion("allow"):
        bij = MaskedAutoregressive(
            jax.random.key(0),
            transformer=Affine(),
            dim=N_Z,
            nn_width=N_H,
            nn_depth=DEPTH_AR,
            nn_activation=jax.nn.elu,
        )
    params, static = eqx.partition(bij, eqx.is_inexact_array)

    def sample(p, eps):
        b = paramax.unwrap(eqx.combine(p, static))
        z, log_det = jax.vmap(b.transform_and_log_det)(eps)
        return z, _base_log_prob(eps) - log_det

    def log_prob(p, z):
        b = paramax.unwrap(eqx.combine(p, static))
        eps, log_det_inv = jax.vmap(b.inverse_and_log_det)(z)
        return _base_log_prob(eps) + log_det_inv

    return params, sample, log_prob


def _jitted(params, sample, log_prob):
    """(jitted ops, params, the same ops unjitted)."""
    grad = jax.grad
    raw = {
        "sample": sample,
        "log_prob": log_prob,
        "grad_sample": grad(lambda p, x: jnp.mean(sample(p, x)[1])),
        "grad_log_prob": grad(lambda p, x: jnp.mean(log_prob(p, x))),
    }
    return {op: jax.jit(fn) for op, fn in raw.items()}, params, raw


def _inner(fn, steps):
    """``steps`` calls of ``fn(params, x)`` inside one jitted ``lax.scan`` (one per slice of
    ``xs``): the per-step cost without the per-call dispatch (pytree flattening, launch)."""

    def run(p, xs):
        def body(acc, x):
            out = fn(p, x)
            return jax.tree.map(lambda a, o: a + jnp.sum(o), acc, out), None

        zero = jax.tree.map(lambda o: jnp.zeros((), o.dtype), jax.eval_shape(fn, p, xs[0]))
        return jax.lax.scan(body, zero, xs)[0]

    return jax.jit(run)


def inner_rows(impls, batches, ops, steps, repeats):
    """``iaf_injit`` rows: microseconds per step with ``steps`` steps per jitted call."""
    for batch in batches:
        xs = jax.random.normal(jax.random.key(1), (steps, batch, N_Z), jnp.float32)
        for op in ops:
            fns = {n: (_inner(raw[op], steps), p) for n, (_, p, raw) in impls.items()}
            times = {n: [] for n in fns}
            for fn, p in fns.values():
                jax.block_until_ready(fn(p, xs))
            for _ in range(repeats):
                for name, (fn, p) in fns.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(fn(p, xs))
                    times[name].append((time.perf_counter() - t0) / steps)
            med = {n: statistics.median(t) * 1e6 for n, t in times.items()}
            for name in fns:
                _line(bench="iaf_injit", op=op, batch=batch, impl=name, steps=steps,
                      median_us_per_step=round(med[name], 3),
                      min_us_per_step=round(min(times[name]) * 1e6, 3))  # fmt: skip
            peers = [n for n in fns if n != "dgm"]
            if "dgm" in fns and peers:
                fastest = min(peers, key=med.get)
                _line(bench="iaf_injit_ratio", op=op, batch=batch, faster_peer=fastest,
                      peer_over_dgm=round(med[fastest] / med["dgm"], 3))  # fmt: skip


def conv_rows(batch, repeats):
    """dgm only (the peers have no conv IAF): the VAE's form, one level-0 block of the mnist
    preset (n_z 32 channels at 16×16, n_h 64, depth_ar 1, context of n_h channels)."""
    step = IAFStep(ARConvNet(N_Z, (N_H,) * DEPTH_AR, key=jax.random.key(0)), form="affine")
    params, static = eqx.partition(step, eqx.is_inexact_array)
    eps = jax.random.normal(jax.random.key(1), (batch, N_Z, 16, 16), jnp.float32)
    ctx = jax.random.normal(jax.random.key(2), (batch, N_H, 16, 16), jnp.float32)

    def log_q(p):
        z, log_det = jax.vmap(eqx.combine(p, static))(eps, ctx)
        return jnp.mean(jnp.sum(-0.5 * eps**2, axis=(1, 2, 3)) - log_det), z

    fns = {"sample": jax.jit(log_q), "grad_sample": jax.jit(jax.grad(lambda p: log_q(p)[0]))}
    for op, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params))
            times.append(time.perf_counter() - t0)
        _line(bench="iaf_conv", op=op, batch=batch, impl="dgm",
              median_ms=round(statistics.median(times) * 1e3, 4),
              min_ms=round(min(times) * 1e3, 4), compile_s=round(compile_s, 3))  # fmt: skip


def _line(**kw):
    print(json.dumps(kw), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="16,1024")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ops", default="sample,log_prob,grad_sample,grad_log_prob")
    parser.add_argument("--conv-batch", type=int, default=16, help="0: no conv rows")
    parser.add_argument("--inner", type=int, default=64, help="steps per call, iaf_injit rows")
    parser.add_argument("--inner-ops", default="sample,grad_sample", help="iaf_injit operations")
    args = parser.parse_args()
    impls = {}
    for name, build in [("dgm", dgm_ops), ("numpyro", numpyro_ops), ("flowjax", flowjax_ops)]:
        try:
            impls[name] = _jitted(*build())
        except ImportError as err:
            _line(bench="iaf", impl=name, skipped=f"not installed ({err})")
    for batch in [int(b) for b in args.batches.split(",")]:
        x = jax.random.normal(jax.random.key(1), (batch, N_Z), jnp.float32)
        for op in args.ops.split(","):
            times, compile_s = {n: [] for n in impls}, {}
            for name, (fns, params, _) in impls.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fns[op](params, x))
                compile_s[name] = time.perf_counter() - t0
            for _ in range(args.repeats):  # round robin: every implementation sees the same load
                for name, (fns, params, _) in impls.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(fns[op](params, x))
                    times[name].append(time.perf_counter() - t0)
            med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
            for name in impls:
                _line(bench="iaf", op=op, batch=batch, impl=name, median_ms=round(med[name], 4),
                      min_ms=round(min(times[name]) * 1e3, 4),
                      compile_s=round(compile_s[name], 3))  # fmt: skip
            peers = [n for n in impls if n != "dgm"]
            if "dgm" in impls and peers:
                fastest = min(peers, key=med.get)
                _line(bench="iaf_ratio", op=op, batch=batch, faster_peer=fastest,
                      peer_over_dgm=round(med[fastest] / med["dgm"], 3))  # fmt: skip
    if args.inner:
        batches = [int(b) for b in args.batches.split(",")]
        inner_rows(impls, batches, args.inner_ops.split(","), args.inner, args.repeats)
    if args.conv_batch:
        conv_rows(args.conv_batch, args.repeats)


if __name__ == "__main__":
    main()
