import os, sys
os.environ.setdefault("OPENBLAS_NUM_THREADS","1")
import jax, jax.numpy as jnp, numpy as np, scipy.optimize
from dgm.models.mlp_generator import MLPGenerator
import dgm
jax.config.update("jax_enable_x64", True)
res=[]
for seed in range(int(sys.argv[1]), int(sys.argv[2])):
    m = MLPGenerator.random(seed, weight_scale=float(sys.argv[3]))
    key = jax.random.key(seed)
    u_true, y = m.simulate(key, 1)
    y = y[0]
    post = dgm.condition(m.generate, y, m.input_dim)
    try: u0 = np.asarray(post.initial_points(jax.random.key(seed+100), 16))
    except RuntimeError as e: print(seed, "GN fail"); continue
    f = jax.jit(lambda z: -m.log_posterior_latent(z, y)); g = jax.jit(jax.grad(lambda z: -m.log_posterior_latent(z, y)))
    # global mode: many restarts
    best = min((scipy.optimize.minimize(lambda z: float(f(z)), z0, jac=lambda z: np.asarray(g(z)), method="BFGS") for z0 in np.random.default_rng(0).normal(size=(30,3))*2), key=lambda r: r.fun)
    lp_start = np.array([-float(f(u[:3])) for u in u0])
    modes = np.array([-scipy.optimize.minimize(lambda z: float(f(z)), u[:3], jac=lambda z: np.asarray(g(z)), method="BFGS").fun for u in u0])
    gap = -best.fun - modes
    print(seed, "frac bad starts", np.mean(gap > 3), "max gap", gap.max().round(1), "start lp rel", (lp_start + best.fun).round(1)[:8], flush=True)
