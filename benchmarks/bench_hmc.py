"""HMC on a 100-d Gaussian (sds linearly 0.01...1): dgm vs BlackJAX (vs NumPyro).

Same target, step size, fixed leapfrog step count, identity metric, number of chains and
draws, and the same starting points (exact draws from the target, so no burn-in). Each
sampler is compiled first, then timed over ``--repeats`` steady-state runs; one JSON line
per result on stdout. ESS is ArviZ's multi-chain bulk ESS; ``min_ess_per_s`` is the worst
coordinate's ESS over the median sampling time (compilation excluded).

Run:  python benchmarks/bench_hmc.py [--chains 4] [--draws 1000] [--repeats 3]
"""

import argparse
import json
import statistics
import time

from dgm._runtime import configure_cpu

configure_cpu(1)  # one device: every sampler runs its chains by vmap on one core group

import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

DIM = 100
SD = np.linspace(0.01, 1.0, DIM)


def log_density(x):
    return -0.5 * jnp.sum((x / jnp.asarray(SD)) ** 2)


def min_ess(draws: np.ndarray) -> float:
    """Worst bulk ESS over coordinates; ``draws`` is (chains, draws, dim)."""
    return float(np.min(az.ess(az.convert_to_dataset(draws), method="bulk")["x"].values))


def timed(run, repeats: int):
    t0 = time.perf_counter()
    out = jax.block_until_ready(run())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(run())
        times.append(time.perf_counter() - t0)
    return out, first, times


def bench_dgm(keys, positions, step_size, imm, num_steps, num_draws, repeats):
    from dgm.inference.base import ChainRunner
    from dgm.inference.hmc import HMCParams, build_kernel, init

    runner = ChainRunner(build_kernel(log_density), chunk_size=num_draws)
    states = jax.vmap(lambda x: init(x, log_density))(positions)
    # Python-int step counts: a fixed, compile-time leapfrog loop.
    params = HMCParams(jnp.asarray(step_size), imm, num_steps, num_steps)
    results = [runner.run(keys, states, params, num_draws) for _ in range(repeats + 1)]
    res = results[-1]
    times = [r.wall_s for r in results[1:]]
    accept = float(res.infos.accept_prob.mean())
    return np.asarray(res.draws), results[0].compile_s, times, accept


def bench_blackjax(keys, positions, step_size, imm, num_steps, num_draws, repeats):
    import blackjax

    kernel = blackjax.hmc(log_density, step_size, imm, num_steps)

    @jax.jit
    def run(keys, positions):
        def one_chain(key, position):
            def body(state, k):
                state, info = kernel.step(k, state)
                return state, (state.position, info.acceptance_rate)

            state = kernel.init(position)
            _, out = jax.lax.scan(body, state, jax.random.split(key, num_draws))
            return out

        return jax.vmap(one_chain)(keys, positions)

    (draws, accept), first, times = timed(lambda: run(keys, positions), repeats)
    return np.asarray(draws), first - statistics.median(times), times, float(accept.mean())


def bench_numpyro(keys, positions, step_size, imm, num_steps, num_draws, repeats):
    from numpyro.infer import HMC, MCMC

    kernel = HMC(
        potential_fn=lambda x: -log_density(x),
        step_size=float(step_size),
        inverse_mass_matrix=imm,
        # Passing num_steps= instead gave acceptance 0 in numpyro 0.22 (with step_size set);
        # the trajectory length gives the same count (checked below).
        trajectory_length=float(step_size) * num_steps,
        adapt_step_size=False,
        adapt_mass_matrix=False,
        dense_mass=False,
    )
    num_chains = positions.shape[0]
    mcmc = MCMC(
        kernel,
        num_warmup=0,
        num_samples=num_draws,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    # NumPyro takes one key for all chains and splits it itself.
    key = keys[0]

    def run():
        mcmc.run(key, init_params=positions, extra_fields=("accept_prob", "num_steps"))
        return mcmc.get_samples(group_by_chain=True)

    draws, first, times = timed(run, repeats)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    if not np.all(np.asarray(extra["num_steps"]) == num_steps):
        raise RuntimeError(f"numpyro took {np.unique(extra['num_steps'])} steps, not {num_steps}")
    accept = float(np.mean(extra["accept_prob"]))
    return np.asarray(draws), first - statistics.median(times), times, accept


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--step-size", type=float, default=0.015)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default="blackjax,numpyro")
    parser.add_argument(
        "--adapt",
        type=int,
        default=1000,
        help="also run every sampler after dgm's diagonal warm-up of this many iterations "
        "(the same adapted step size and metric for all; 0 to skip)",
    )
    args = parser.parse_args()

    key_init, key_run = jax.random.split(jax.random.key(0))
    positions = jax.random.normal(key_init, (args.chains, DIM), jnp.float64) * jnp.asarray(SD)
    keys = jax.random.split(key_run, args.chains)
    settings = [("identity", args.step_size, jnp.ones(DIM))]
    if args.adapt:
        step_size, imm = adapted(keys, positions, args.num_steps, args.adapt)
        settings.append(("adapted-diagonal", step_size, imm))
    for metric, step_size, imm in settings:
        compare(args, keys, positions, metric, step_size, imm)


def adapted(keys, positions, num_steps, num_warmup):
    """dgm's windowed warm-up per chain; the median step size and mean metric, shared."""
    from dgm.inference.adaptation import warmup
    from dgm.inference.hmc import hmc

    kernel = hmc(log_density, 1.0, jnp.ones(positions.shape[1]), num_steps=num_steps)

    def one(key, position):
        out = warmup(key, kernel, kernel.init(position), num_warmup, log_density_fn=log_density)
        return out.params

    keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    out = jax.jit(jax.vmap(one))(keys, positions)
    return float(jnp.median(out.step_size)), jnp.mean(out.inverse_mass_matrix, axis=0)


def compare(args, keys, positions, metric, step_size, imm):
    benches = {"dgm": bench_dgm, "blackjax": bench_blackjax, "numpyro": bench_numpyro}
    names = ["dgm"] + [p for p in args.peers.split(",") if p]
    rows = {}
    for name in names:
        try:
            draws, compile_s, times, accept = benches[name](
                keys, positions, step_size, imm, args.num_steps, args.draws, args.repeats
            )
        except ImportError as err:
            print(
                json.dumps({"benchmark": "hmc_gaussian_100d", "sampler": name, "skipped": str(err)})
            )
            continue
        med = statistics.median(times)
        ess = min_ess(draws)
        rows[name] = {
            "benchmark": "hmc_gaussian_100d",
            "sampler": name,
            "metric": metric,
            "chains": args.chains,
            "draws": args.draws,
            "num_steps": args.num_steps,
            "step_size": step_size,
            "ms_per_iteration": 1e3 * med / args.draws,
            "ms_per_iteration_min": 1e3 * min(times) / args.draws,
            "compile_s": compile_s,
            "accept_rate": accept,
            "min_ess_bulk": ess,
            "min_ess_per_s": ess / med,
            "min_ess_per_grad": ess / (args.chains * args.draws * args.num_steps),
        }
    for name, row in rows.items():
        if name != "dgm" and "dgm" in rows:
            row["dgm_over_peer_ms"] = rows["dgm"]["ms_per_iteration"] / row["ms_per_iteration"]
            row["dgm_over_peer_ess_per_s"] = rows["dgm"]["min_ess_per_s"] / row["min_ess_per_s"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
