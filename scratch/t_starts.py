import os, sys, time
import jax, jax.numpy as jnp, numpy as np, scipy.optimize
from dgm.models.mlp_generator import MLPGenerator
from dgm.inference.manifold import ManifoldSystem
from dgm.inference.starts import typical_starts
jax.config.update("jax_enable_x64", True)
for seed in [8, 11, 5, 1, 2, 4]:
    m = MLPGenerator.random(seed)
    u_true, y = m.simulate(jax.random.key(seed), 1); y = y[0]
    sys_ = ManifoldSystem(m.generate, 6, 3)
    f = jax.jit(lambda z: -m.log_posterior_latent(z, y)); g = jax.jit(jax.grad(lambda z: -m.log_posterior_latent(z, y)))
    best = min((scipy.optimize.minimize(lambda z: float(f(z)), z0, jac=lambda z: np.asarray(g(z)), method="BFGS") for z0 in np.random.default_rng(0).normal(size=(30,3))*2), key=lambda r: r.fun)
    fn = jax.jit(lambda y, k: typical_starts(sys_, y, k, 16))
    t=time.perf_counter(); u, info = fn(y, jax.random.key(seed+100)); jax.block_until_ready(u); t1=time.perf_counter()-t
    t=time.perf_counter(); u, info = fn(y, jax.random.key(seed+101)); jax.block_until_ready(u); t2=time.perf_counter()-t
    modes = np.array([-scipy.optimize.minimize(lambda z: float(f(z)), uu[:3], jac=lambda z: np.asarray(g(z)), method="BFGS").fun for uu in np.asarray(u)])
    lp = np.array([-float(f(uu[:3])) for uu in np.asarray(u)])
    print(seed, f"compile+run {t1:.2f} run {t2:.3f}", "agree", int(info.num_agreeing), "max mode gap", (-best.fun - modes).max().round(2), "start lp rel", (lp+best.fun).round(2)[:6], "cand", np.sort(np.asarray(info.log_density))[::-1][[0,-1]].round(1))
