"""Settings are declared once and checked by one validator (lab.fields)."""

from dataclasses import dataclass
from typing import Literal

import pytest

from lab.algorithms import REGISTRY
from lab.config import TrainConfig, hparam_fields
from lab.fields import check_fields, choice, declared, field_comments, number, positive

NAMES = {"a": 1, "b": 2}


@dataclass(frozen=True)
class Example:
    steps: int = positive(3)  # whole, at least 1
    rate: float = positive(0.1)  # above 0
    decay: float = number(0.9, low=0, high=1, high_open=True)  # in [0, 1)
    batch: int | None = positive(None)  # None: all
    way: int = number(5, low=2)  # at least 2
    mode: Literal["fast", "exact"] = "fast"  # fixed choices
    name: str = choice("a", NAMES)  # choices read at check time
    flag: bool = False  # true or false

    def __post_init__(self):
        check_fields(self)


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "steps: must be a positive whole number, not 0"),
    ({"steps": 2.0}, "steps: must be a positive whole number, not 2.0"),
    ({"steps": True}, "steps: must be a positive whole number, not True"),
    ({"rate": 0}, "rate: must be a positive number, not 0"),
    ({"rate": float("nan")}, "rate: must be a positive number, not nan"),
    ({"decay": 1.0}, "decay: must be a number in [0, 1), not 1.0"),
    ({"batch": 0}, "batch: must be a positive whole number or null, not 0"),
    ({"way": 1}, "way: must be a whole number of at least 2, not 1"),
    ({"mode": "slow"}, "mode: must be one of fast, exact, not 'slow'"),
    ({"name": "c"}, "name: must be one of a, b, not 'c'"),
    ({"flag": "yes"}, "flag: must be true or false, not 'yes'"),
    ({"way": None}, "way: must be given, not null"),
])
def test_a_bad_value_is_refused_in_one_line_naming_its_field(changes, message):
    with pytest.raises(ValueError) as err:
        Example(**changes)
    assert str(err.value) == message


def test_good_values_pass_and_whole_numbers_count_as_numbers():
    Example(steps=1, rate=2, decay=0, batch=None, way=2, mode="exact", name="b", flag=True)


def test_choices_follow_a_registry_that_grows(monkeypatch):
    with pytest.raises(ValueError):
        Example(name="c")
    monkeypatch.setitem(NAMES, "c", 3)
    assert Example(name="c").name == "c"
    assert [d.choices for d in declared(Example) if d.name == "name"] == [("a", "b", "c")]


def test_declarations_give_kinds_choices_and_optionality():
    by_name = {d.name: d for d in declared(Example)}
    assert (by_name["mode"].kind, by_name["mode"].choices) == ("str", ("fast", "exact"))
    assert by_name["batch"].optional and not by_name["steps"].optional
    assert (by_name["decay"].low, by_name["decay"].high, by_name["decay"].high_open) == (0, 1, True)


def test_help_comes_from_the_comment_after_a_field_inherited_ones_included():
    assert field_comments(Example)["decay"] == "in [0, 1)"
    help_of = {f.name: f.help for f in hparam_fields("fomaml")}
    assert help_of["first_order"].startswith("ignore second derivatives")  # its own line
    assert help_of["inner_steps"].startswith("gradient steps")  # declared on the shared base


@pytest.mark.parametrize("algorithm", [a for a in REGISTRY if a != "clustered"])
def test_every_algorithm_s_defaults_pass_its_declarations(algorithm):
    config = TrainConfig(algorithm=algorithm)
    fields = {f.name for f in hparam_fields(algorithm)}
    assert set(config.hparams) == fields
    assert not fields & {"vectorize", "precision"}  # machine settings are the run's, not the algorithm's
