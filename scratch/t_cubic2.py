import jax, jax.numpy as jnp, numpy as np, dgm
def cubic(u): return u[:1] ** 3 + u[1:]
zero = {"half_log_det_fn": lambda y: (lambda u: jnp.zeros((), u.dtype))}
res = dgm.sbc(cubic, 2, jax.random.key(1), num_replications=100, system_kwargs=zero)
r = res.ranks["u"][:, 0]
print(np.bincount(r // 10, minlength=10), res.p_values)
with jax.enable_x64(True):
    u = jax.random.normal(jax.random.split(jax.random.key(1))[0], (100, 2), jnp.float64)
print(np.corrcoef(np.asarray(u[:, 0]), r)[0,1])
