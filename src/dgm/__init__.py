"""dgm: differentiable generative models and exact inference in them, on JAX.

Import creates no arrays and changes no global JAX setting.
"""

from dgm.conditioning import ConditionedGenerator, condition

__version__ = "0.1.0"

__all__ = ["ConditionedGenerator", "condition"]
