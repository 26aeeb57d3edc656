import jax, jax.numpy as jnp, numpy as np, dgm
def cubic(u):
    return u[:1] ** 3 + u[1:]
zero = {"half_log_det_fn": lambda y: (lambda u: jnp.zeros((), u.dtype))}
for kw in [dict(system_kwargs=zero), {}]:
    res = dgm.sbc(cubic, 2, jax.random.key(1), num_replications=200, **kw)
    print(bool(kw), np.round(res.p_values["u"], 6).tolist(), round(res.wall_s), res.failed, flush=True)
