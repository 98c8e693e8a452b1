"""The registry: names, aliases and presets, configs, and plugin discovery through entry points.

Discovery is tested with fake distributions: a ``<name>.dist-info`` directory (METADATA and
entry_points.txt) and a plugin module written into a temporary directory that is put first
on ``sys.path``, then found by a fresh :class:`mtlsolve.registry.Registry`.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np
import pytest

import mtlsolve
from mtlsolve import (
    GramianWeighting,
    InvalidConfigError,
    PluginError,
    PluginWarning,
    UnknownSolverError,
    UnknownStrategyError,
)
from mtlsolve.registry import Registry, hyperparameters, normalise
from mtlsolve.solver import Need

LS = "mtlsolve.plugins.loss_weighting.ls.LinearScalarization"


# ------------------------------------------------------------ fake plugins
_PLUGIN = '''
from typing import ClassVar
import attrs
import numpy as np
from mtlsolve import GramianWeighting, hookimpl

CALLS = []


@attrs.define(kw_only=True, eq=False)
class Constant(GramianWeighting):
    """Weights all equal to ``value`` (a test plugin)."""

    name: ClassVar[str] = {name!r}
    aliases: ClassVar[dict] = {aliases!r}
    value: float = {value!r}

    def weights_from_gramian(self, gramian, system):
        return np.full(len(gramian), self.value), {{}}

{extra}

@hookimpl
def register_solvers(register):
    CALLS.append(1)
    for cls in {classes}:
        register(cls)
'''


@attrs.frozen
class FakePlugin:
    root: str
    distribution: str
    module: str
    entry_point: str

    @property
    def calls(self) -> list:
        return sys.modules[self.module].CALLS

    def entry_points(self) -> list[importlib.metadata.EntryPoint]:
        return list(importlib.metadata.distribution(self.distribution).entry_points)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A function that installs a fake distribution with one plugin module into a fresh sys.path entry."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def install(
        distribution: str,
        *,
        solver: str = "fake_constant",
        value: float = 2.0,
        aliases: Mapping[str, Any] | None = None,
        source: str | None = None,
        extra: str = "",
        classes: str = "(Constant,)",
    ) -> FakePlugin:
        module = f"fake_mtlsolve_plugin_{uuid.uuid4().hex[:10]}"
        entry_point = distribution.replace("-", "_")
        info = tmp_path / f"{entry_point}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[mtlsolve]\n{entry_point} = {module}\n")
        if source is None:
            source = _PLUGIN.format(
                name=solver, aliases=dict(aliases or {}), value=value, extra=textwrap.dedent(extra), classes=classes
            )
        (tmp_path / f"{module}.py").write_text(source)
        made.append(module)
        importlib.invalidate_caches()
        return FakePlugin(str(tmp_path), distribution, module, entry_point)

    yield install
    for module in made:
        sys.modules.pop(module, None)


def own_entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.distribution("mtlsolve").entry_points)


# --------------------------------------------------------- names and aliases
@attrs.define(kw_only=True, eq=False)
class _NashLike(GramianWeighting):
    name: ClassVar[str] = "nash_like_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"nashlike": {}, "log_nash_like": {"loss_transform": "log"}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant"})

    step: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    mode: str = attrs.field(validator=attrs.validators.in_(("a", "b")))

    def weights_from_gramian(self, gramian, system):
        return np.full(len(gramian), self.step), {}


@pytest.fixture
def local():
    reg = Registry(entry_points=lambda: [])
    reg.register(_NashLike, "test-dist", "test-plugin")
    return reg


def test_normalise():
    assert normalise("Nash_MTL") == normalise("nash-mtl") == normalise("NashMTL") == normalise("nash mtl") == "nashmtl"


@pytest.mark.parametrize(
    "name", ["nash_like_mtl", "Nash-Like-MTL", "NASH_LIKE_MTL", "nashlikemtl", "NashLike", "nash-like"]
)
def test_names_are_case_dash_and_underscore_insensitive(local, name):
    entry, preset = local.resolve(name)
    assert entry.cls is _NashLike and entry.name == "nash_like_mtl" and preset == {}
    assert (entry.distribution, entry.plugin) == ("test-dist", "test-plugin")
    assert type(local.get(name, mode="a")) is _NashLike


def test_alias_presets_and_conflicts(local):
    assert local.resolve("Log-Nash-Like")[1] == {"loss_transform": "log"}
    solver = local.get("log_nash_like", mode="b")
    assert solver.loss_transform == "log" and solver.mode == "b"
    assert local.get("log_nash_like", mode="b", loss_transform="log").loss_transform == "log"
    with pytest.raises(InvalidConfigError, match="presets"):
        local.get("log_nash_like", mode="b", loss_transform=None)
    assert local.available() == ["nash_like_mtl"]  # aliases are not listed


def test_builtin_aliases_with_presets():
    ls = mtlsolve.get("ls")
    assert (type(ls).__module__ + "." + type(ls).__qualname__) == LS and ls.reduction == "sum"
    mean = mtlsolve.get("mean")
    assert type(mean) is type(ls) and mean.reduction == "mean"
    assert mtlsolve.get("Mean", reduction="mean").reduction == "mean"
    with pytest.raises(InvalidConfigError, match=r"'mean' presets \{'reduction': 'mean'\}; use 'ls'"):
        mtlsolve.get("mean", reduction="sum")
    for alias in ("EW", "ew", "linear-scalarization", "Linear_Scalarization", "SUM"):
        assert mtlsolve.registry.resolve(alias)[0].name == "ls"
    np.testing.assert_allclose(mtlsolve.get("mean")(np.array([[1.0, 0.0], [0.0, 2.0]])).direction, [0.5, 1.0])


def test_hyperparameters_lists_defaults_and_required_fields():
    fields = hyperparameters(_NashLike)
    assert fields == {"loss_transform": None, "step": 1.0, "mode": attrs.NOTHING}
    assert "_state" not in fields


def test_unknown_name_lists_the_valid_ones(local):
    with pytest.raises(UnknownSolverError, match=r"no solver named 'nash'; available: nash_like_mtl"):
        local.get("nash")
    with pytest.raises(UnknownSolverError) as info:
        mtlsolve.get("definitely-not-a-solver")
    assert "ls" in str(info.value).split("available: ")[1].split(", ")
    with pytest.raises(UnknownSolverError, match="must be a string"):
        local.resolve(3)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UnknownSolverError, match=r"no solver named 'mgd'; available: .*; did you mean 'mgda'"):
        mtlsolve.get("mgd")
    with pytest.raises(UnknownSolverError, match=r"; did you mean 'mean'\?$"):  # an alias, as its class spells it
        mtlsolve.get("meen")
    with pytest.raises(UnknownSolverError) as info:
        mtlsolve.get("definitely-not-a-solver")
    assert "did you mean" not in str(info.value)  # nothing close: no guess


def test_unknown_strategy_is_a_lookup_error_and_an_invalid_config():
    with pytest.raises(UnknownStrategyError, match=r"no strategy named 'stgv'; available: .*; did you mean 'stgu'\?$"):
        mtlsolve.get_strategy("stgv")
    with pytest.raises(LookupError, match="did you mean 'teleport'"):
        mtlsolve.strategy_from_config({"name": "teleprt"})
    assert issubclass(UnknownStrategyError, InvalidConfigError)  # callers catching InvalidConfigError still do


def test_unknown_and_invalid_arguments_list_the_fields(local):
    with pytest.raises(
        InvalidConfigError,
        match=r"unknown argument\(s\) \['stpe'\]; valid fields: loss_transform=None, step=1.0, mode$",
    ):
        local.get("nash_like_mtl", stpe=2, mode="a")
    with pytest.raises(
        InvalidConfigError, match=r"invalid argument .*step.*; valid fields: loss_transform=None, step=1.0, mode"
    ):
        local.get("nash_like_mtl", step=-1.0, mode="a")
    with pytest.raises(InvalidConfigError, match="invalid argument .*mode"):
        local.get("nash_like_mtl")  # a required field is missing
    with pytest.raises(InvalidConfigError, match=r"invalid argument.*valid fields: reduction='sum', weights=None"):
        mtlsolve.get("ls", reduction="median")


# ---------------------------------------------------------------- configs
def test_from_config(local):
    solver = local.from_config({"name": "Nash-Like", "mode": "a", "step": 0.5})
    assert type(solver) is _NashLike and (solver.mode, solver.step) == ("a", 0.5)
    assert mtlsolve.from_config({"name": "mean"}).reduction == "mean"
    assert mtlsolve.from_config({"name": "ls", "weights": [1, 2]}).weights_ == (1.0, 2.0)


def test_from_config_errors(local):
    with pytest.raises(InvalidConfigError, match=r"needs a 'name' key; got keys \['mode'\]"):
        local.from_config({"mode": "a"})
    with pytest.raises(InvalidConfigError, match="must be a mapping"):
        local.from_config("nash_like_mtl")
    with pytest.raises(UnknownSolverError, match="available: nash_like_mtl"):
        local.from_config({"name": "nash"})
    with pytest.raises(InvalidConfigError, match=r"unknown argument\(s\) \['colour'\]; valid fields"):
        local.from_config({"name": "nash_like_mtl", "mode": "a", "colour": "red"})
    with pytest.raises(InvalidConfigError, match="invalid argument"):
        local.from_config({"name": "nash_like_mtl", "mode": "c"})
    with pytest.raises(InvalidConfigError, match="presets"):
        mtlsolve.from_config({"name": "mean", "reduction": "sum"})


def test_nothing_in_a_config_is_evaluated(local):
    with pytest.raises(UnknownSolverError):
        local.from_config({"name": "__import__('os').system('false')"})
    with pytest.raises(InvalidConfigError, match="invalid argument"):
        local.from_config({"name": "nash_like_mtl", "mode": "a", "step": "1 + 1"})


# --------------------------------------------------------------- discovery
def test_a_plugin_distribution_is_discovered(site):
    plugin = site("mtlsolve-fake-one", solver="fake_constant", value=3.0, aliases={"fc": {"value": 5.0}})
    reg = Registry()
    assert "fake_constant" in reg.available() and "ls" in reg.available()
    entry, _ = reg.resolve("Fake-Constant")
    assert (entry.distribution, entry.plugin) == ("mtlsolve-fake-one", plugin.entry_point)
    assert entry.cls.__module__ == plugin.module
    np.testing.assert_allclose(reg.get("fake_constant")(np.array([[1.0, 0.0], [0.0, 1.0]])).direction, [3.0, 3.0])
    assert reg.get("fc").value == 5.0
    assert reg.resolve("ls")[0].distribution == "mtlsolve"


def test_a_plugin_that_fails_to_import_warns_and_the_rest_works(site):
    site("mtlsolve-fake-broken", source="raise RuntimeError('boom at import')\n")
    site("mtlsolve-fake-good", solver="fake_good")
    reg = Registry()
    with pytest.warns(PluginWarning, match=r"from distribution 'mtlsolve-fake-broken' failed to load.*boom at import"):
        names = reg.available()
    assert "fake_good" in names and "ls" in names
    assert mtlsolve.get("ls") is not None


@pytest.mark.parametrize(
    "source",
    ["import sys\nsys.exit(3)\n", "raise SystemExit('bye')\n", "raise GeneratorExit()\n"],
    ids=["sys.exit", "SystemExit", "GeneratorExit"],
)
def test_a_plugin_that_exits_at_import_warns_and_the_host_lives(site, source):
    site("mtlsolve-fake-exit", source=source)
    site("mtlsolve-fake-good", solver="fake_good")
    reg = Registry()
    with pytest.warns(
        PluginWarning, match=r"distribution 'mtlsolve-fake-exit' failed to load \((SystemExit|GeneratorExit)"
    ):
        names = reg.available()
    assert "fake_good" in names and "ls" in names


def test_a_plugin_whose_hook_exits_warns_and_the_rest_works(site):
    source = (
        "import sys\nfrom mtlsolve import hookimpl\n\n@hookimpl\ndef register_solvers(register):\n    sys.exit(1)\n"
    )
    site("mtlsolve-fake-hook-exit", source=source)
    site("mtlsolve-fake-good", solver="fake_good")
    reg = Registry()
    with pytest.warns(PluginWarning, match=r"'mtlsolve-fake-hook-exit' failed while registering solvers \(SystemExit"):
        assert "fake_good" in reg.available()


def test_a_keyboard_interrupt_while_loading_a_plugin_is_not_swallowed(site):
    site("mtlsolve-fake-interrupt", source="raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        Registry().available()


def test_a_plugin_whose_hook_raises_warns_and_the_rest_works(site):
    source = (
        "from mtlsolve import hookimpl\n\n@hookimpl\ndef register_solvers(register):\n    raise KeyError('bad hook')\n"
    )
    site("mtlsolve-fake-hook", source=source)
    site("mtlsolve-fake-good", solver="fake_good")
    reg = Registry()
    with pytest.warns(PluginWarning, match=r"distribution 'mtlsolve-fake-hook' failed while registering.*bad hook"):
        assert "fake_good" in reg.available()


@pytest.mark.parametrize("first", [0, 1])
def test_two_plugins_claiming_one_name_warn_naming_both_and_the_first_wins(site, first):
    plugins = [
        site("mtlsolve-fake-a", solver="fake_same", value=1.0),
        site("mtlsolve-fake-b", solver="fake_same", value=2.0),
    ]
    winner, loser = plugins[first], plugins[1 - first]
    reg = Registry(entry_points=lambda: own_entry_points() + winner.entry_points() + loser.entry_points())
    with pytest.warns(PluginWarning) as record:
        entry, _ = reg.resolve("fake_same")
    messages = [str(w.message) for w in record]
    assert len(messages) == 1
    assert f"distribution '{loser.distribution}'" in messages[0]
    assert f"distribution '{winner.distribution}'" in messages[0]
    assert entry.distribution == winner.distribution
    assert reg.get("fake_same").value == (1.0 if first == 0 else 2.0)


def test_a_plugin_cannot_shadow_a_builtin_name_or_alias(site):
    plugin = site("mtlsolve-fake-shadow", solver="ls", value=7.0)
    other = site("mtlsolve-fake-alias", solver="fake_other", aliases={"mean": {}, "fake_other_alias": {}})
    # the third-party entry points come first here: the built-ins are still registered first
    reg = Registry(entry_points=lambda: plugin.entry_points() + other.entry_points() + own_entry_points())
    with pytest.warns(PluginWarning) as record:
        names = reg.available()
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert messages[0].startswith("solver name 'ls' from distribution 'mtlsolve-fake-shadow'")
    assert messages[1].startswith("solver name 'mean' from distribution 'mtlsolve-fake-alias'")
    assert all("with 'ls' from distribution 'mtlsolve'" in m for m in messages)
    assert reg.resolve("ls")[0].distribution == "mtlsolve"
    assert reg.resolve("mean") == (reg.resolve("ls")[0], {"reduction": "mean"})
    # the clashing alias is dropped, the rest of that plugin's names register
    assert "fake_other" in names and reg.resolve("fake_other_alias")[0].name == "fake_other"


def test_the_clash_is_also_detected_by_the_default_discovery(site):
    site("mtlsolve-fake-shadow", solver="ls", value=7.0)
    reg = Registry()
    with pytest.warns(PluginWarning, match=r"'ls' from distribution 'mtlsolve-fake-shadow'.*distribution 'mtlsolve'"):
        assert reg.resolve("ls")[0].distribution == "mtlsolve"


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_autoload_loads_only_mtlsolves_own_entry_points(site, monkeypatch, value):
    site("mtlsolve-fake-one", solver="fake_constant")
    monkeypatch.setenv("MTLSOLVE_DISABLE_PLUGIN_AUTOLOAD", value)
    reg = Registry()
    assert "fake_constant" not in reg.available() and "ls" in reg.available()
    assert {e.distribution for e in reg.entries()} == {"mtlsolve"}
    own = {ep.name for ep in own_entry_points()}
    assert set(reg.plugin_manager.list_name_plugin()) and {n for n, _ in reg.plugin_manager.list_name_plugin()} <= own


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_autoload_stays_on_for_falsy_values(site, monkeypatch, value):
    site("mtlsolve-fake-one", solver="fake_constant")
    monkeypatch.setenv("MTLSOLVE_DISABLE_PLUGIN_AUTOLOAD", value)
    assert "fake_constant" in Registry().available()


@pytest.mark.parametrize("by", ["entry_point", "distribution"])
def test_block_plugins_by_entry_point_or_distribution_name(site, monkeypatch, by):
    blocked = site("mtlsolve-fake-blocked", solver="fake_blocked")
    site("mtlsolve-fake-kept", solver="fake_kept")
    monkeypatch.setenv("MTLSOLVE_BLOCK_PLUGINS", f" something-else , {getattr(blocked, by)} ")
    reg = Registry()
    names = reg.available()
    assert "fake_blocked" not in names and "fake_kept" in names and "ls" in names
    assert blocked.module not in sys.modules  # not even imported


def test_a_blocked_broken_plugin_does_not_warn(site, monkeypatch):
    site("mtlsolve-fake-broken", source="raise RuntimeError('boom at import')\n")
    monkeypatch.setenv("MTLSOLVE_BLOCK_PLUGINS", "mtlsolve-fake-broken")
    assert "ls" in Registry().available()  # PluginWarning is an error in this suite


def test_loading_is_lazy_and_happens_once(site):
    plugin = site("mtlsolve-fake-one", solver="fake_constant")
    discovered = []

    def entry_points():
        discovered.append(1)
        return own_entry_points() + plugin.entry_points()

    reg = Registry(entry_points=entry_points)
    assert discovered == [] and plugin.module not in sys.modules and reg.plugin_manager is None
    reg.get("fake_constant")
    reg.get("fake-constant")
    reg.available()
    reg.resolve("ls")
    reg.load()
    assert discovered == [1] and plugin.calls == [1]
    reg.reload()
    assert discovered == [1, 1] and plugin.calls == [1, 1]
    assert "fake_constant" in reg.available()


def test_concurrent_first_lookups_load_once(site):
    plugin = site("mtlsolve-fake-one", solver="fake_constant")
    discovered = []

    def slow_entry_points():
        discovered.append(1)
        time.sleep(0.05)
        return plugin.entry_points()

    reg = Registry(entry_points=slow_entry_points)
    results = []
    threads = [threading.Thread(target=lambda: results.append(reg.available())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert discovered == [1] and plugin.calls == [1]
    assert results == [["fake_constant"]] * 8


def test_the_process_registry_reload_finds_a_new_plugin(site):
    plugin = site("mtlsolve-fake-late", solver="fake_late")
    try:
        assert "fake_late" not in mtlsolve.available()  # loaded before this distribution existed
        mtlsolve.registry.reload()
        assert mtlsolve.registry.resolve("fake_late")[0].distribution == "mtlsolve-fake-late"
    finally:
        sys.path.remove(plugin.root)
        importlib.invalidate_caches()
        mtlsolve.registry.reload()
    assert "fake_late" not in mtlsolve.available()


_BAD_CLASSES = """
from mtlsolve import Solver


class NotAttrs(GramianWeighting):
    name: ClassVar[str] = "not_attrs"


@attrs.define(kw_only=True, eq=False)
class UnknownFamily(Constant):
    name: ClassVar[str] = "unknown_family"
    family: ClassVar[str] = "XX"


@attrs.define(kw_only=True, eq=False)
class BadName(Constant):
    name: ClassVar[str] = "Bad-Name"


@attrs.define(kw_only=True, eq=False)
class UnknownProperty(Constant):
    name: ClassVar[str] = "unknown_property"
    properties: ClassVar[frozenset] = frozenset({"convex"})


@attrs.define(kw_only=True, eq=False)
class BadNeeds(Constant):
    name: ClassVar[str] = "bad_needs"
    needs: ClassVar[frozenset] = frozenset({"gramian"})


@attrs.define(kw_only=True, eq=False)
class BadAliases(Constant):
    name: ClassVar[str] = "bad_aliases"
    aliases: ClassVar[list] = ["other"]


class NotASolver:
    name = "not_a_solver"
"""

_PROBLEMS = {
    "NotAttrs": "is not an attrs class",
    "UnknownFamily": "declares unknown family 'XX'",
    "BadName": "invalid canonical name 'Bad-Name'",
    "UnknownProperty": r"claims unknown properties \['convex'\]",
    "BadNeeds": "needs that are not mtlsolve.Need values",
    "BadAliases": "aliases that are not a mapping",
    "NotASolver": "is not a subclass of mtlsolve.Solver",
}


def test_invalid_classes_are_rejected_with_a_warning_and_the_valid_ones_register(site):
    classes = "(NotAttrs, UnknownFamily, BadName, Constant, UnknownProperty, BadNeeds, BadAliases, NotASolver)"
    site("mtlsolve-fake-invalid", solver="fake_valid", extra=_BAD_CLASSES, classes=classes)
    reg = Registry()
    with pytest.warns(PluginWarning) as record:
        names = reg.available()
    messages = [str(w.message) for w in record]
    assert len(messages) == len(_PROBLEMS)
    for (cls, problem), message in zip(_PROBLEMS.items(), messages):
        assert cls in message and "distribution 'mtlsolve-fake-invalid'" in message
        assert re.search(problem, message), (problem, message)
    assert "fake_valid" in names
    assert not {"not_attrs", "unknown_family", "unknown_property", "bad_needs", "bad_aliases"} & set(names)


def test_an_invalid_state_schema_is_rejected():
    reg = Registry(entry_points=lambda: [])
    for schema in ({"x": "m"}, {"x": ("m", "k")}, {"x": (-1,)}, {3: ()}, ["x"], {"x": (True,)}):

        @attrs.define(kw_only=True, eq=False)
        class BadSchema(GramianWeighting):
            """A class with an invalid schema."""

            name: ClassVar[str] = "bad_schema"
            state_schema: ClassVar[Any] = schema

        with pytest.raises(PluginError, match="invalid state_schema"):
            reg.register(BadSchema)
    assert reg.available() == []


def test_invalid_arguments_are_named():
    with pytest.raises(InvalidConfigError, match=r"invalid argument temperature='hot'"):
        mtlsolve.get("dwa", temperature="hot")


def test_registering_an_invalid_class_directly_raises():
    reg = Registry(entry_points=lambda: [])

    class Plain(GramianWeighting):
        name: ClassVar[str] = "plain"

    with pytest.raises(PluginError, match="not an attrs class"):
        reg.register(Plain)
    with pytest.raises(PluginError, match="not a subclass"):
        reg.register(int)
    assert reg.available() == []


def test_every_registered_solver_declares_valid_metadata():
    for entry in mtlsolve.registry.entries():
        cls = entry.cls
        assert cls.family in mtlsolve.FAMILIES, cls
        assert all(isinstance(n, Need) for n in cls.needs), cls
        assert set(cls.properties) <= set(mtlsolve.PROPERTIES), cls
        assert cls.paper, f"{cls.name} does not cite its paper"
        assert cls.__doc__, f"{cls.name} has no docstring"
        if cls.randomized:
            assert "seed" in hyperparameters(cls), f"randomized {cls.name} has no seed field"
        if entry.distribution == "mtlsolve" and (cls.stateful or cls.randomized):
            assert cls.state_schema, f"{cls.name} keeps state but declares no state_schema"


# ------------------------------------------------------- a light import
def test_import_and_listing_do_not_import_heavy_modules():
    script = textwrap.dedent(
        """
        import json, sys
        import mtlsolve
        lazy = mtlsolve.registry.registry.plugin_manager is None
        plugins_at_import = sorted(m for m in sys.modules if m.startswith("mtlsolve.plugins."))
        names = mtlsolve.available()
        heavy = sorted(m for m in ("cvxpy", "numba", "torch") if m in sys.modules)
        print(json.dumps({"lazy": lazy, "plugins_at_import": plugins_at_import, "names": names, "heavy": heavy}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd="/")
    report = json.loads(out.stdout)
    assert report["lazy"] and report["plugins_at_import"] == []
    assert "ls" in report["names"]
    assert report["heavy"] == [], f"import mtlsolve + available() imported {report['heavy']}"
    assert "PluginWarning" not in out.stderr, out.stderr
