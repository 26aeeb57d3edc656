import time, warnings, jax, numpy as np
from dgm.models.mlp_generator import MLPGenerator
import dgm
m = MLPGenerator.random(8); _, y = m.simulate(jax.random.key(8), 1)
post = dgm.condition(m.generate, y[0], 6)
import cProfile
t=time.perf_counter()
idata = post.sample(jax.random.key(1), num_chains=4, num_samples=500, num_warmup=200, progress_bar=False)
print(time.perf_counter()-t, dict((k, idata.posterior.attrs[k]) for k in ["r_hat_max","lp_chain_mean","chains_disagree","disagreeing_chains","compile_s","wall_s", "step_size"]))
# old default start: GN from prior
with jax.enable_x64(True):
    u0 = post._newton(jax.random.normal(jax.random.key(3), (16, 6), "float64"), 1e-11, 100)
    lp = post._chain_checker.log_density(u0[None], y[0])[0]; print(lp); u0 = u0[np.argsort(lp)[[0, -1, -2, -3]]]
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    idata = post.sample(jax.random.key(1), num_chains=4, num_samples=500, num_warmup=200, progress_bar=False, init=u0)
print([str(x.message)[:300] for x in w], idata.posterior.attrs["lp_chain_mean"])
