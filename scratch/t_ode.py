import time, jax, jax.numpy as jnp, numpy as np, dgm
from dgm.models.ode_predator_prey import PredatorPreyODE
m = PredatorPreyODE()
u, y = m.observe(0); print(y.round(2))
post = dgm.condition(m.generate, y, m.input_dim)
t = time.perf_counter()
idata = post.sample(jax.random.key(0), num_chains=4, num_samples=300, num_warmup=200, progress_bar=False)
a = idata.posterior.attrs
print(time.perf_counter()-t, a["compile_s"], a["wall_s"], a["step_size"], float(idata.sample_stats.is_accepted.mean()), a["r_hat_max"], a["lp_chain_mean"])
print(idata.posterior.u.values[..., :4].mean((0,1)), idata.posterior.u.values[..., :4].std((0,1)))
