import warnings, jax, jax.numpy as jnp, numpy as np, time
from dgm.models.mlp_generator import MLPGenerator
import dgm
m = MLPGenerator.random(8)
with jax.enable_x64(True):
    y = m.simulate(jax.random.key(8), 1)[1][0]
    post = dgm.condition(m.generate, y, 6)
    u0 = post._newton(jax.random.normal(jax.random.key(108), (16, 6), jnp.float64), 1e-11, 100)
    lp = post._chain_checker.log_density(u0[None], y)[0]
print(np.round(lp, 2))
order = np.argsort(lp)
good = post.initial_points(jax.random.key(1), 3)
for trap in order[:3]:
    init = jnp.concatenate([u0[trap][None], good])
    for kw in [dict(num_warmup=200), dict(num_warmup=0, adapt=False, step_size=0.25)]:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            idata = post.sample(jax.random.key(2), num_chains=4, num_samples=500, init=init, progress_bar=False, **kw)
        a = idata.posterior.attrs
        print(trap, lp[trap].round(2), kw, a["r_hat_max"], a["lp_chain_mean"].round(2), a["disagreeing_chains"], len(w))
