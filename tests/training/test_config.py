"""TrainConfig validation names the field."""

import pytest

from dgm import training


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="`train.batch_size` must be a positive int; got 0"):
        training.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="`train.kl_initial` must be in"):
        training.TrainConfig(kl_initial=2.0)
