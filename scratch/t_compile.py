import time, jax, jax.numpy as jnp
from dgm.models.mlp_generator import MLPGenerator
from dgm.inference.manifold import ManifoldSystem, gauss_newton
from dgm.inference.starts import move_uphill
jax.config.update("jax_enable_x64", True)
m = MLPGenerator.random(8); u, y = m.simulate(jax.random.key(8), 4); y=y[0]
s = ManifoldSystem(m.generate, 6, 3)
for name, f in [("gn", jax.jit(jax.vmap(lambda u: gauss_newton(s, u, y, 1e-11, 100)))), ("uphill", jax.jit(jax.vmap(lambda u: move_uphill(s, u, y, 30, 1e-8))))]:
    t=time.perf_counter(); jax.block_until_ready(f(u)); print(name, time.perf_counter()-t)
