"""dgm: differentiable generative models and exact inference in them, on JAX.

Import creates no arrays and changes no global JAX setting.
"""

__version__ = "0.1.0"
