"""Hyper-parameter schedules: functions of the update step, evaluated on the host.

:func:`~dgm.training.fit` calls each schedule with the number of updates done so far and
hands the value to the loss as a float32 scalar in ``hyper``, so a changing value never
recompiles the train step.
"""

from collections.abc import Callable

from dgm.training.config import TrainConfig

Schedule = Callable[[int], float]


def linear_anneal(initial: float, steps: int, final: float = 1.0) -> Schedule:
    """A weight rising linearly from ``initial`` by ``1 / steps`` per update, capped at ``final``.

    Args:
        initial: the weight at step 0.
        steps: updates over which the weight grows by 1 (0: ``final`` from the start).
        final: the cap.

    Returns:
        ``schedule(step) = min(final, initial + step / steps)``.

    Example:
        >>> beta = linear_anneal(0.01, 5000)
        >>> beta(0), beta(10**6)
        (0.01, 1.0)
    """

    def schedule(step: int) -> float:
        if steps <= 0:
            return final
        return min(final, initial + step / steps)

    return schedule


def constant(value: float) -> Schedule:
    """The schedule that is ``value`` at every step."""
    return lambda step: value


def kl_weight(step: int, anneal_steps: int, initial: float = 0.01) -> float:
    """β after ``step`` updates: ``min(1, initial + step / anneal_steps)`` (1 if no annealing)."""
    return linear_anneal(initial, anneal_steps)(step)


def kl_schedule(config: TrainConfig) -> dict[str, Schedule]:
    """``{"kl_weight": ...}``: the linear KL anneal set by ``config`` (DMM, VAE losses)."""
    return {"kl_weight": linear_anneal(config.kl_initial, config.anneal_steps)}
