import time, jax, numpy as np, dgm, sys
from dgm.models.mlp_generator import MLPGenerator
m = MLPGenerator.random(0)
kw = {}
if sys.argv[1] == "bug":
    kw = dict(system_kwargs={"half_log_det_fn": lambda y: (lambda u: jax.numpy.zeros((), u.dtype))})
res = dgm.sbc(m.generate, 6, jax.random.key(int(sys.argv[2])), num_replications=200, **kw)
print(sys.argv[1:], {k: np.round(v, 4).tolist() for k, v in res.p_values.items()}, res.wall_s, res.metrics()["accept_rate_mean"])
