"""The generic constrained step on a user's ODE simulator: where the time goes.

A deterministic predator–prey model solved by RK4 (2,000 sub-steps of 0.01, observed
every 200: 10 times × 2 species = 20 outputs) with 4 log-parameters and 20 log-normal
observation-noise inputs (M = 24, N = 20), conditioned through the *generic* path
(``dgm.condition`` with no Gram factor or log-det hook). In one process, on one host
device, interleaved and repeated (medians):

* ``jacobian``: one forward-mode Jacobian (``system.jacobian``);
* ``grad_vjp`` / ``grad_remat`` / ``grad_tangent``: the gradient of ½ log det(J Jᵀ) by one
  reverse pass through ``jacfwd(generator)``, by the same pass through the generator with
  its scan bodies checkpointed, and by the forward-only tangent route (its tangential
  part; :mod:`dgm.inference.second_order`), each with ∇½uᵀu and the solve for P;
* ``step_*``: one integrator step (3 geodesic sub-steps with projections, reversibility
  checks and Jacobians, then the kick) of a fixed-length trajectory, per step, with each
  gradient, and none (``half_log_det_fn = 0``: a lower bound, wrong target);
* ``step_mici``: Mici's ``ConstrainedLeapfrogIntegrator`` step on the same model (its
  constraint Jacobian and matrix–Hessian product given as the same jitted JAX functions).

``--params K`` gives the model K parameters (d = K tangent directions, M = K + 20): the
4 log-rates are a fixed linear map of them, to see how each route scales with d. The
``second_order_term_in_jacobians`` line gives each route's share of the step (its step less
the lower bound) in Jacobians, and the route ``second_order="auto"`` takes.

Run: ``python benchmarks/bench_generic_step.py`` (JSON lines; ``--repeats``, ``--params``).
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from dgm._runtime import configure_cpu  # noqa: E402

configure_cpu(1)  # one host device: the target is per core

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from dgm.inference import constrained_hmc  # noqa: E402
from dgm.inference.manifold import ManifoldSystem  # noqa: E402

NUM_PARAMS, NUM_TIMES, SUB_STEPS, DT, SIGMA = 4, 10, 200, 0.01, 0.1
M, N = NUM_PARAMS + 2 * NUM_TIMES, 2 * NUM_TIMES
LOG_RATES = jnp.log(jnp.array([1.0, 0.1, 1.5, 0.075]))  # prey growth, predation, death, gain
MIXING = jnp.eye(4)  # log-rate offsets = MIXING @ parameters (4 × NUM_PARAMS)


def set_num_params(num_params):
    """Give the model ``num_params`` parameters (a fixed mixing of them into the 4 rates)."""
    global NUM_PARAMS, M, MIXING
    NUM_PARAMS, M = num_params, num_params + N
    cols = jnp.arange(num_params)
    MIXING = jnp.where(cols[None, :] % 4 == jnp.arange(4)[:, None], 1.0, 0.0)
    MIXING = MIXING / jnp.sqrt(jnp.sum(MIXING, axis=1, keepdims=True))


def trajectory(u_params):
    """Populations at the 10 observation times, (20,), from RK4 on the LV equations."""
    a, b, c, d = jnp.exp(LOG_RATES + 0.2 * MIXING @ u_params)

    def f(x):
        return jnp.stack([a * x[0] - b * x[0] * x[1], -c * x[1] + d * x[0] * x[1]])

    def rk4(x, _):
        k1 = f(x)
        k2 = f(x + 0.5 * DT * k1)
        k3 = f(x + 0.5 * DT * k2)
        k4 = f(x + DT * k3)
        return x + DT / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    def observe(x, _):
        x, _ = jax.lax.scan(rk4, x, None, length=SUB_STEPS)
        return x, x

    _, xs = jax.lax.scan(observe, jnp.array([10.0, 5.0]), None, length=NUM_TIMES)
    return xs.reshape(-1)


def generator(u):
    """y = x(θ) · exp(σ n): u = [θ (4) | n (20)]."""
    return trajectory(u[:NUM_PARAMS]) * jnp.exp(SIGMA * u[NUM_PARAMS:])


def on_manifold(theta, y):
    """The input with parameters ``theta`` that generates ``y`` (closed form)."""
    return jnp.concatenate([theta, (jnp.log(y) - jnp.log(trajectory(theta))) / SIGMA])


def median_ms(fn, args, number):
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(number):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / number * 1e3


def dgm_cases(y, u0, num_steps, step_size):
    systems = {
        "vjp": ManifoldSystem(generator, M, N, "fwd", second_order="vjp"),
        "remat": ManifoldSystem(generator, M, N, "fwd", second_order="remat"),
        "tangent": ManifoldSystem(generator, M, N, "fwd", second_order="tangent"),
        "no_log_det": ManifoldSystem(generator, M, N, "fwd", half_log_det_fn=lambda u: 0.0),
    }
    params = constrained_hmc.CHMCParams(jnp.asarray(step_size), num_steps, num_steps)
    cases, compile_s = {}, {}
    for name, system in systems.items():
        kernel = jax.jit(constrained_hmc.build_kernel(system, y, 3, 1e-8, 100, True))
        state = constrained_hmc.init(system, u0)
        t0 = time.perf_counter()
        info = jax.block_until_ready(kernel(jax.random.key(0), state, params))[1]
        compile_s[f"step_{name}"] = time.perf_counter() - t0
        if bool(info.projection_failed | info.is_irreversible):
            raise RuntimeError(f"{name}: the benchmark trajectory failed; lower the step size")
        cases[f"step_{name}"] = (kernel, (jax.random.key(0), state, params), 1 / num_steps)
        if name != "no_log_det":
            jac, factor = system.cache(u0)
            grad = jax.jit(system.potential_grad)
            t0 = time.perf_counter()
            jax.block_until_ready(grad(u0, jac, factor))
            compile_s[f"grad_{name}"] = time.perf_counter() - t0
            cases[f"grad_{name}"] = (grad, (u0, jac, factor), 1.0)
    cases["jacobian"] = (jax.jit(systems["remat"].jacobian), (u0,), 1.0)
    return cases, compile_s


def mici_case(y, u0, num_steps, step_size):
    import mici
    from bench_chmc import jax_mici_system

    system = jax_mici_system(generator, y, u0)
    integrator = mici.integrators.ConstrainedLeapfrogIntegrator(
        system,
        step_size=step_size,
        n_inner_step=3,
        reverse_check_tol=2e-8,
        projection_solver=mici.solvers.solve_projection_onto_manifold_quasi_newton,
        projection_solver_kwargs={"constraint_tol": 1e-8, "position_tol": 1e-8, "max_iters": 100},
    )
    sampler = mici.samplers.StaticMetropolisHMC(
        system, integrator, np.random.default_rng(0), n_step=num_steps
    )

    def run(num_iter):
        state = mici.states.ChainState(pos=np.asarray(u0), mom=None, dir=1)
        sampler.sample_chains(n_warm_up_iter=0, n_main_iter=num_iter, init_states=[state],
                              display_progress=False)  # fmt: skip

    run(1)  # compile the JAX functions
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-steps", type=int, default=5)
    parser.add_argument("--step-size", type=float, default=0.05)
    parser.add_argument("--no-mici", action="store_true")
    parser.add_argument("--params", type=int, default=NUM_PARAMS)
    args = parser.parse_args()
    set_num_params(args.params)
    theta = jnp.zeros(NUM_PARAMS)
    u_true = jnp.concatenate([theta, jax.random.normal(jax.random.key(1), (N,))])
    y = generator(u_true)
    u0 = on_manifold(0.1 * jnp.ones(NUM_PARAMS), y)
    cases, compile_s = dgm_cases(y, u0, args.num_steps, args.step_size)
    mici_run = None if args.no_mici else mici_case(y, u0, args.num_steps, args.step_size)
    times = {name: [] for name in cases} | ({} if mici_run is None else {"step_mici": []})
    for _ in range(args.repeats):
        for name, (fn, fn_args, scale) in cases.items():
            number = 20 if name == "jacobian" else 3
            times[name].append(median_ms(fn, fn_args, number) * scale)
        if mici_run is not None:
            t0 = time.perf_counter()
            mici_run(3)
            times["step_mici"].append((time.perf_counter() - t0) / (3 * args.num_steps) * 1e3)
    jac_ms = statistics.median(times["jacobian"])
    load = os.getloadavg()[0]
    for name, values in times.items():
        ms = statistics.median(values)
        row = {"case": name, "ms": round(ms, 3), "jacobians": round(ms / jac_ms, 2)}
        row |= {"compile_s": round(compile_s[name], 2)} if name in compile_s else {}
        print(json.dumps(row | {"repeats": args.repeats, "load1": load}), flush=True)
    routes = ("vjp", "remat", "tangent")
    second = {k: statistics.median(times[f"step_{k}"]) for k in (*routes, "no_log_det")}
    term = {k: round((second[k] - second["no_log_det"]) / jac_ms, 2) for k in routes}
    auto = ManifoldSystem(generator, M, N, "fwd").second_order
    row = {"case": "second_order_term_in_jacobians", **term, "auto": auto, "params": NUM_PARAMS}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
