import jax, jax.numpy as jnp, numpy as np
from dgm._sbc_batch import BatchedConditioner
def cubic(u): return u[:1] ** 3 + u[1:]
zero = {"half_log_det_fn": lambda y: (lambda u: jnp.zeros((), u.dtype))}
y = np.array([2.0])
# exact marginal of u0 by quadrature
g = np.linspace(-4, 4, 20001); w = np.exp(-0.5*g**2 - 0.5*(y[0]-g**3)**2); print("exact mean u0", (g*w).sum()/w.sum())
wb = w*np.sqrt(1+9*g**4); print("buggy mean u0", (g*wb).sum()/wb.sum())
for kw in [zero, {}]:
    run = BatchedConditioner(cubic, 2, 1, kw, 4, 500, 200)
    d, a, ok = run(y, jax.random.key(0))
    print(bool(kw), d[..., 0].mean(), a, ok)
