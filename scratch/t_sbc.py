import time, jax, numpy as np, dgm
from dgm.models.mlp_generator import MLPGenerator
m = MLPGenerator.random(0)
t=time.perf_counter()
res = dgm.sbc(m.generate, 6, jax.random.key(0), num_replications=int(__import__("sys").argv[1]), on_replication=lambda i, r, a: print(i, round(time.perf_counter()-t,1), r["u"], round(a,2), flush=True))
print(res.metrics())
