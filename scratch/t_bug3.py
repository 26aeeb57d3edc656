import jax, jax.numpy as jnp, numpy as np, dgm, sys
from dgm.models.mlp_generator import MLPGenerator
from dgm.inference.manifold import DenseCholesky
zero = {"half_log_det_fn": lambda y: (lambda u: jnp.zeros((), u.dtype))}
if sys.argv[1] == "mlp":
    m = MLPGenerator.random(0); gen, dim = m.generate, 6
else:
    gen, dim = (lambda u: u[:1] ** 3 + u[1:]), 2
derived = {"half_log_det": lambda u: DenseCholesky.from_jacobian(jax.jacfwd(gen)(u)).half_log_det()}
for kw in [dict(system_kwargs=zero), {}]:
    res = dgm.sbc(gen, dim, jax.random.key(1), num_replications=200, derived=derived, **kw)
    print(sys.argv[1], bool(kw), {k: np.round(v, 6).tolist() for k, v in res.p_values.items()}, round(res.wall_s), flush=True)
