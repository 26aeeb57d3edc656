import jax, jax.numpy as jnp, numpy as np
from dgm.models.lotka_volterra import LotkaVolterra
m = LotkaVolterra()
with jax.enable_x64(True):
    u = jax.random.normal(jax.random.key(0), (200, 104), jnp.float64)
    y = jax.vmap(m.generate)(u)
fin = np.all(np.isfinite(np.asarray(y)), 1)
print("finite", fin.sum(), "max abs", np.nanmax(np.abs(np.asarray(y)[fin]), 1)[:20].round(0))
