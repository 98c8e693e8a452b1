"""The training-loop capabilities record (mtlsolve.Capabilities): built from every solver's class
attributes, per instance where hyperparameters change what a solver reads, taken whole by the
wrapper cr_mogm from its base, validated, and what the adapter reads."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import InvalidConfigError, PluginError, SolverError
from mtlsolve.plugins.gramian.cr_mogm import CRMOGM
from mtlsolve.registry import Registry, hyperparameters
from mtlsolve.solver import DECLARATIONS, SHARDS, Capabilities, Need, Solver, Weighting, shards_for
from mtlsolve.system import GradientSystem

#: hyperparameters without a default, by solver name
REQUIRED = {"krum": {"n_byzantine": 1}, "trimmed_mean": {"trim_number": 1}, "cosmos": {"penalty": 1.0}}
ENTRIES = {e.name: e for e in mtlsolve.registry.entries()}
#: instances whose hyperparameters change what they read or which gradients they are defined on
CONFIGURED = [
    {"name": "mgda", "normalisation": "loss"},
    {"name": "imtl_g", "loss_transform": "log"},
    {"name": "gradnorm", "params": "all_shared"},
]


def make(spec: str | dict) -> Solver:
    if isinstance(spec, dict):
        return mtlsolve.from_config(spec)
    return mtlsolve.get(spec, **REQUIRED.get(spec, {}))


def legacy(source: Any) -> dict[str, Any]:
    """The old per-attribute declarations of a solver class or instance, as record fields."""
    values = {name: getattr(source, name) for name in DECLARATIONS if name != "shards"}
    if not isinstance(source, type):
        values["needs"] = source.requirements()
    if isinstance(values["grads"], property):  # decided per instance: the class record takes the default
        values["grads"] = None
    values["learnable"] = bool(source.parameter_state)
    return values


def fields(record: Capabilities) -> dict[str, Any]:
    return attrs.asdict(record, recurse=False)


# ------------------------------------------------------- every registered solver
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_the_class_record_is_the_class_attributes(name):
    cls = ENTRIES[name].cls
    record = cls.capabilities
    assert isinstance(record, Capabilities)
    assert {k: v for k, v in fields(record).items() if k != "shards"} == legacy(cls)
    assert record.shards == (cls.shards or shards_for(record.needs))


@pytest.mark.parametrize("spec", sorted(ENTRIES) + CONFIGURED, ids=str)
def test_the_instance_record_is_the_instance_declarations(spec):
    solver = make(spec)
    record = solver.capabilities
    assert {k: v for k, v in fields(record).items() if k != "shards"} == legacy(solver)
    assert record.needs == solver.requirements() >= type(solver).needs
    assert record.shards == (solver.shards or shards_for(record.needs))


def test_hyperparameters_change_the_instance_record():
    assert make({"name": "mgda", "normalisation": "loss"}).capabilities.needs == {Need.GRAMIAN, Need.LOSSES}
    assert mtlsolve.get("mgda").capabilities.needs == {Need.GRAMIAN}
    assert mtlsolve.get("gradnorm").capabilities.grads == "last_shared"
    assert mtlsolve.get("gradnorm", params="all_shared").capabilities.grads is None
    assert mtlsolve.get("gradnorm").capabilities.learnable and mtlsolve.get("uw").capabilities.learnable
    assert mtlsolve.get("modo").capabilities.batches == 3
    assert mtlsolve.get("mgda_ub").capabilities.grads == "representation"


def test_shards_default_to_the_least_the_needs_allow():
    expected = {"graddrop": "matrix", "mgda": "gramian", "imtl_hybrid": "gramian", "uw": "losses", "ls": "none"}
    for name, shards in expected.items():
        assert ENTRIES[name].cls.capabilities.shards == shards, name
    assert [shards_for(frozenset(n)) for n in ([], [Need.LOSSES], [Need.GRAMIAN, Need.LOSSES], [Need.MATRIX])] == [
        s for s in SHARDS if s != "coordinate"
    ]
    assert ENTRIES["trimmed_mean"].cls.capabilities.shards == "coordinate"  # declared: no default gives it


# ------------------------------------------------------------------ cr_mogm
WEIGHTINGS = sorted(name for name, e in ENTRIES.items() if issubclass(e.cls, Weighting))
BASES = WEIGHTINGS + CONFIGURED + [{"name": "cr_mogm", "base": "modo"}]


@pytest.mark.parametrize("base", BASES, ids=str)
def test_cr_mogm_takes_its_base_record_whole(base):
    wrapped = make(base)
    solver = CRMOGM(base=wrapped)
    assert solver.capabilities == attrs.evolve(wrapped.capabilities, stateful=True)
    changed = {k for k, v in fields(solver.capabilities).items() if v != getattr(wrapped.capabilities, k)}
    assert changed <= {"stateful"} and solver.capabilities.stateful
    for name in DECLARATIONS:  # code reading the attributes sees the base's too
        if name != "stateful":
            assert getattr(solver, name) == getattr(wrapped, name), name


def test_the_cr_mogm_class_record_holds_the_defaults():
    assert CRMOGM.capabilities == Capabilities(stateful=True)


# -------------------------------------------------------- a third-party solver
@attrs.define(kw_only=True, eq=False)
class ThirdParty(Weighting):
    """Declares through the class attributes only, as plugins did before the record existed."""

    name: ClassVar[str] = "third_party"
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX, Need.LOSSES})
    stateful: ClassVar[bool] = True
    randomized: ClassVar[bool] = True
    batches: ClassVar[int] = 2
    post_step: ClassVar[bool] = True
    post_step_losses: ClassVar[bool] = False
    parameter_state: ClassVar[frozenset[str]] = frozenset({"scale"})
    state_schema: ClassVar[dict] = {"scale": ("m",), "rng": None}
    paper: ClassVar[str] = "none"

    seed: int | None = None

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, dict]:
        return np.full(system.m, 1.0 / system.m), {}


def test_a_third_party_solver_setting_class_attributes_gets_a_correct_record():
    expected = Capabilities(
        needs={Need.MATRIX, Need.LOSSES},
        batches=2,
        stateful=True,
        randomized=True,
        learnable=True,
        post_step=True,
        post_step_losses=False,
    )
    assert ThirdParty.capabilities == expected and ThirdParty().capabilities == expected
    assert expected.shards == "matrix" and expected.grads is None
    assert CRMOGM(base=ThirdParty()).capabilities == expected  # stateful already


def test_a_class_may_declare_more_shards_but_not_fewer():
    @attrs.define(kw_only=True, eq=False)
    class Gathering(ThirdParty):
        """Needs only the Gramian, yet asks for the rows of G."""

        needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAMIAN})
        shards: ClassVar[str | None] = "matrix"

    assert Gathering.capabilities.shards == "matrix"
    Gathering.shards = "losses"
    with pytest.raises(InvalidConfigError, match="gathers too little"):
        Gathering.capabilities  # noqa: B018


def test_the_registry_refuses_invalid_declarations():
    for declaration in ({"batches": 0}, {"grads": "features"}, {"stateful": "yes"}, {"shards": "rows"}):

        @attrs.define(kw_only=True, eq=False)
        class Invalid(ThirdParty):
            """Invalid training-loop declarations."""

            name: ClassVar[str] = "invalid_declarations"

        for key, value in declaration.items():
            setattr(Invalid, key, value)
        reg = Registry(entry_points=lambda: [])
        with pytest.raises(PluginError, match="invalid training-loop capabilities"):
            reg.register(Invalid)
        assert reg.available() == []


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"needs": {"gramian"}}, "mtlsolve.Need values"),
        ({"needs": Need.GRAMIAN}, None),
        ({"needs": 3}, "mtlsolve.Need values"),
        ({"grads": "features"}, "grads must be one of"),
        ({"batches": 0}, "positive integer"),
        ({"batches": True}, "positive integer"),
        ({"batches": 1.5}, "positive integer"),
        ({"stateful": 1}, "True or False"),
        ({"learnable": None}, "True or False"),
        ({"post_step_losses": "no"}, "True or False"),
        ({"shards": "rows"}, "shards must be one of"),
        ({"needs": {Need.MATRIX}, "shards": "gramian"}, "at least 'matrix'"),
        ({"needs": {Need.LOSSES}, "shards": "none"}, "at least 'losses'"),
        ({"needs": {Need.GRAMIAN}, "shards": "coordinate"}, "column by column"),
        ({"needs": {Need.MATRIX, Need.GRAMIAN}, "shards": "coordinate"}, "column by column"),
        ({"needs": {Need.MATRIX}, "shards": "coordinate", "randomized": True}, "no random numbers"),
        ({"batches": 3, "grads": "representation"}, "one batch"),
    ],
    ids=str,
)
def test_invalid_records_are_refused(kwargs, match):
    if match is None:  # a lone Need is one need
        assert Capabilities(**kwargs).needs == {Need.GRAMIAN}
        return
    with pytest.raises(InvalidConfigError, match=match):
        Capabilities(**kwargs)


def test_the_record_is_frozen_and_evolve_validates():
    record = Capabilities(needs={Need.GRAMIAN})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.batches = 3  # type: ignore[misc]
    with pytest.raises(InvalidConfigError):
        attrs.evolve(record, shards="losses")
    assert attrs.evolve(record, batches=3).batches == 3
    assert Capabilities() == Capabilities(needs=frozenset(), shards="none")
    assert hash(record) == hash(attrs.evolve(record))


# ----------------------------------------------------------------- the adapter
@attrs.define(kw_only=True, eq=False)
class RecordOnlyWrapper(Weighting):
    """A wrapper that declares through its record alone (its class attributes stay the defaults)."""

    name: ClassVar[str] = "record_only_wrapper"
    family: ClassVar[str] = "GW"

    base: Any = attrs.field(converter=lambda b: mtlsolve.get(b) if isinstance(b, str) else b)

    def instance_capabilities(self) -> Capabilities:
        return self.base.capabilities

    def requirements(self) -> frozenset[Need]:
        return self.base.requirements()

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, dict]:
        return self.base.weights(system)


def _backward(solver: Solver, **kwargs: Any) -> Any:
    from mtlsolve.adapters import MultiTaskBackward

    return MultiTaskBackward(solver, torch.nn.Linear(3, 2), **kwargs)


def test_the_adapter_reads_the_record():
    assert RecordOnlyWrapper.needs == frozenset() and RecordOnlyWrapper.grads is None
    adapter = _backward(RecordOnlyWrapper(base="gradnorm"))
    assert (adapter.path, adapter.grads) == ("gramian", "last_shared")
    assert _backward(RecordOnlyWrapper(base="mgda_ub")).grads == "representation"
    assert _backward(RecordOnlyWrapper(base="uw")).path == "losses"
    with pytest.raises(SolverError, match="accumulation"):
        _backward(RecordOnlyWrapper(base="famo"), accumulation_steps=2)
    with pytest.raises(ValueError, match="representation gradients"):
        _backward(RecordOnlyWrapper(base="mgda_ub"), grads="shared")


def test_the_adapter_reads_a_wrapped_multi_batch_solver_as_three_batches():
    adapter = _backward(RecordOnlyWrapper(base="modo"))
    losses = [torch.rand(2, requires_grad=True) for _ in range(3)]
    assert adapter._stacked(losses).shape == (6,)
    assert _backward(CRMOGM(base="sdmgrad"))._stacked(losses).shape == (6,)


def test_hyperparameters_listing_is_unchanged():
    assert "base" in hyperparameters(CRMOGM) and "capabilities" not in hyperparameters(CRMOGM)
