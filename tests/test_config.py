"""dgm.config validators: the message names the field, what was expected and what arrived."""

import pytest

from dgm import training
from dgm.config import check_choice, check_nonnegative, check_positive
from dgm.experiments import _dmm


@pytest.mark.parametrize(
    "check,value,integer,message",
    [
        (check_positive, 0, True, "`n` must be a positive int; got 0"),
        (check_positive, 2.0, True, "`n` must be a positive int; got 2.0"),
        (check_positive, True, True, "`n` must be a positive int; got True"),
        (check_positive, -0.5, False, "`n` must be a positive number; got -0.5"),
        (check_nonnegative, -1, True, "`n` must be an int >= 0; got -1"),
        (check_nonnegative, 1.5, True, "`n` must be an int >= 0; got 1.5"),
        (check_nonnegative, "1", False, "`n` must be a number >= 0; got '1'"),
    ],
)
def test_numeric_checks_reject(check, value, integer, message):
    with pytest.raises(ValueError, match=f"^{message}$".replace(".", r"\.")):
        check("n", value, integer=integer)


def test_numeric_checks_accept():
    check_positive("n", 3, integer=True)
    check_positive("x", 1e-9)
    check_nonnegative("n", 0, integer=True)
    check_nonnegative("x", 0.0)
    check_choice("c", "b", ("a", "b"))
    with pytest.raises(ValueError, match=r"`c` must be one of \['a', 'b'\]; got 'z'"):
        check_choice("c", "z", ("a", "b"))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: training.TrainConfig(patience=-1), "`train.patience` must be an int >= 0"),
        (lambda: training.TrainConfig(checkpoint_every=-1), "`train.checkpoint_every` must be"),
        (lambda: training.TrainConfig(learning_rate=0.0), "`train.learning_rate` must be a"),
        (lambda: training.TrainConfig(l2=-0.1), "`train.l2` must be a number >= 0"),
        (lambda: _dmm.ModelConfig(num_iafs=-1), "`model.num_iafs` must be an int >= 0"),
        (lambda: _dmm.ModelConfig(rnn_dim=0), "`model.rnn_dim` must be a positive int"),
        (lambda: _dmm.ModelConfig(cell="tanh"), "`model.cell` must be one of"),
    ],
)
def test_training_and_dmm_configs_name_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_list_fields_take_json_or_shell_stripped_lists():
    """``--set methods=["hmc","chmc"]`` without single quotes reaches dgm as
    ``methods=[hmc,chmc]``: it means the same list; malformed lists name the field."""
    import dataclasses

    from dgm.config import override

    @dataclasses.dataclass(frozen=True)
    class C:
        methods: tuple = ("a",)
        depths: tuple = (2, 2)

    for value in ('["hmc","chmc"]', "[hmc,chmc]", "hmc,chmc", " [ hmc , chmc ] "):
        assert override(C(), [f"methods={value}"]).methods == ("hmc", "chmc")
    assert override(C(), ["methods=hmc"]).methods == ("hmc",)
    assert override(C(), ["methods=[]"]).methods == ()
    assert override(C(), ["depths=[3,1]"]).depths == (3, 1)
    assert override(C(), ["depths=4,2"]).depths == (4, 2)
    assert override(C(), ["depths=5"]).depths == (5,)
    for bad in ("[a,,b]", "[a,[b]]", '{"a": 1}', "[a,'b']"):
        with pytest.raises(ValueError, match=r"`methods` expects a list"):
            override(C(), [f"methods={bad}"])


def test_numbers_are_not_truncated_nor_taken_from_booleans_and_sections_need_a_field():
    """``--set`` once turned ``num_epochs=2.5`` into 2 and ``true`` into 1, and ``train=3``
    replaced the whole training section with the string "3"."""
    import dataclasses

    from dgm.config import override
    from dgm.training import TrainConfig

    @dataclasses.dataclass(frozen=True)
    class C:
        train: TrainConfig = TrainConfig()

    assert override(C(), ["train.num_epochs=7"]).train.num_epochs == 7
    assert override(C(), ["train.num_epochs=8.0"]).train.num_epochs == 8
    assert override(C(), ["train.learning_rate=2"]).train.learning_rate == 2.0
    bad_values = [("num_epochs=2.5", "an int"), ("num_epochs=true", "an int"),
                  ("learning_rate=true", "a finite float"),
                  ("learning_rate=fast", "a finite float"),
                  ("learning_rate=Infinity", "a finite float"),  # JSON's inf was taken
                  ("learning_rate=-Infinity", "a finite float"),
                  ("learning_rate=NaN", "a finite float"),
                  ("learning_rate=1" + "0" * 400, "a finite float")]  # fmt: skip
    for bad, kind in bad_values:
        with pytest.raises(ValueError, match=f"`train.{bad.split('=')[0]}` expects {kind}"):
            override(C(), [f"train.{bad}"])
    with pytest.raises(ValueError, match=r"config field 'train' has sub-fields \(num_epochs"):
        override(C(), ["train=3"])


def test_list_items_are_checked_against_the_fields_annotation():
    """``--set chmc.num_steps=[3,x]`` was taken and the run failed later with "invalid
    literal for int() with base 10: 'x'", naming no field; ``num_steps=3`` gave a range of
    one bound. Items are read as the annotation's type, and a fixed-length tuple its length."""
    import dataclasses

    from dgm.config import override

    @dataclasses.dataclass(frozen=True)
    class C:
        num_steps: tuple[int, int] = (4, 8)
        depths: tuple[int, ...] = (2, 2)
        times: tuple[float, ...] = (5.0,)
        names: tuple[str, ...] = ("a",)

    assert override(C(), ["num_steps=[3,6]"]).num_steps == (3, 6)
    assert override(C(), ["num_steps=3,6.0"]).num_steps == (3, 6)
    assert override(C(), ["depths=5"]).depths == (5,)
    assert override(C(), ["times=[1,2.5]"]).times == (1.0, 2.5)
    assert override(C(), ["names=[b,c]"]).names == ("b", "c")
    for bad, message in [
        ("num_steps=[3,x]", "`num_steps` expects a list of 2 ints; got '[3,x]'"),
        ("num_steps=3", "`num_steps` expects a list of 2 ints; got '3'"),
        ("depths=[2,2.5]", "`depths` expects a list of ints; got '[2,2.5]'"),
        ("times=[1,true]", "`times` expects a list of floats; got '[1,true]'"),
        ("names=[b,1]", "`names` expects a list of strs; got '[b,1]'"),
    ]:
        with pytest.raises(
            ValueError, match=f"^{message}$".replace(".", r"\.").replace("[", r"\[")
        ):
            override(C(), [bad])


def test_set_splits_at_the_first_equals_sign_and_int_lists_refuse_booleans():
    """``--set name=a=b`` sets ``name`` to ``a=b``; ``true`` is no int in an int list."""
    import dataclasses

    from dgm.config import override

    @dataclasses.dataclass(frozen=True)
    class C:
        name: str = "x"
        depths: tuple[int, ...] = (2, 2)

    assert override(C(), ["name=a=b"]).name == "a=b"
    with pytest.raises(ValueError, match=r"^`depths` expects a list of ints; got '\[1,true\]'$"):
        override(C(), ["depths=[1,true]"])


def test_check_range_is_half_open():
    from dgm.config import check_range

    check_range("alpha", 0, 0, 1)
    check_range("alpha", 0.999, 0, 1)
    for bad in (1, 1.0, -1e-9, float("nan"), "x"):
        with pytest.raises(ValueError, match=r"^`alpha` must lie in \[0, 1\); got "):
            check_range("alpha", bad, 0, 1)
