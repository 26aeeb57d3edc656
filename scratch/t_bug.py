import jax, numpy as np, dgm, sys
from dgm.models.mlp_generator import MLPGenerator
ns, ws = float(sys.argv[1]), float(sys.argv[2])
m = MLPGenerator.random(0, noise_scale=ns, weight_scale=ws)
zero = {"half_log_det_fn": lambda y: (lambda u: jax.numpy.zeros((), u.dtype))}
for kw in [dict(system_kwargs=zero), {}]:
    res = dgm.sbc(m.generate, 6, jax.random.key(1), num_replications=200, **kw)
    print(ns, ws, bool(kw), np.round(res.p_values["u"], 5).tolist(), round(res.wall_s), flush=True)
