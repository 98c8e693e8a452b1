"""Training strategies as plugins: lookup by name, a third-party strategy found through the
``register_strategies`` hook of an entry point, validated settings (errors name the setting), settings
from a config mapping, and the settings/runtime split.

Third-party discovery uses a fake distribution (a ``<name>.dist-info`` directory with METADATA and
entry_points.txt, and a plugin module) in a temporary directory put first on ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import textwrap
import uuid

import attrs
import pytest

import mtlsolve
from mtlsolve import InvalidConfigError, PluginWarning, StrategySettings
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.settings import COSTSettings, MTGDSettings, STGUSettings
from mtlsolve.registry import Registry
from mtlsolve.strategy import settings_for


# ------------------------------------------------------------------ built-ins by name
@pytest.mark.parametrize(
    "name, cls",
    [
        ("cost", COSTSettings),
        ("COST", COSTSettings),
        ("teleport", COSTSettings),
        ("stgu", STGUSettings),
        ("Sel-Update", STGUSettings),
        ("task_grouping", STGUSettings),
        ("mtgd", MTGDSettings),
        ("MGD", MTGDSettings),
        ("mtl-mto", MTGDSettings),
    ],
)
def test_builtin_strategies_are_found_by_name_and_alias(name, cls):
    entry, preset = mtlsolve.registry.resolve_strategy(name)
    assert entry.cls is cls and preset == {}
    assert (entry.distribution, entry.plugin) == ("mtlsolve", "strategies")
    settings = mtlsolve.get_strategy(name, **({"num_tasks": 2} if cls is MTGDSettings else {}))
    assert type(settings) is cls and settings.name == cls.name


def test_available_strategies_and_runtime_classes():
    assert {"cost", "mtgd", "stgu"} <= set(mtlsolve.available_strategies())
    assert not {"teleport", "mgd"} & set(mtlsolve.available_strategies())  # aliases are not listed
    assert [e.name for e in mtlsolve.registry.strategy_entries()] == sorted(mtlsolve.available_strategies())
    from mtlsolve.adapters.strategies.cost import COST

    assert strategy_class("Teleport") is COST is COSTSettings.runtime_class()
    for entry in mtlsolve.registry.strategy_entries():
        assert entry.cls.paper, f"{entry.name} does not cite its paper"


def test_strategies_are_not_solvers_and_unknown_names_list_the_valid_ones():
    assert "cost" not in mtlsolve.available()
    with pytest.raises(InvalidConfigError, match=r"no strategy named 'costly'; available: .*cost.*stgu"):
        mtlsolve.get_strategy("costly")
    with pytest.raises(InvalidConfigError, match="no strategy named 3"):
        mtlsolve.registry.resolve_strategy(3)


def test_looking_up_strategies_does_not_import_torch():
    script = (
        "import sys, mtlsolve;"
        "mtlsolve.get('ls'); s = mtlsolve.get_strategy('cost', base='mgda'); mtlsolve.get_strategy('mtgd', num_tasks=3);"
        "print(sorted(mtlsolve.available_strategies()), 'torch' in sys.modules)"
    )
    env = {**os.environ, "MTLSOLVE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split("]")[-1].strip() == "False", out


# ------------------------------------------------------------------ settings validation
@pytest.mark.parametrize(
    "name, settings, field",
    [
        ("cost", {"lora_rank": 0}, "lora_rank"),
        ("cost", {"trigger": "weak"}, "trigger"),
        ("cost", {"trigger_fraction": 0.0}, "trigger_fraction"),
        ("cost", {"sharp_radius": -1.0}, "sharp_radius"),
        ("cost", {"start_step": 1.5}, "start_step"),
        ("cost", {"htr": "yes"}, "htr"),
        ("cost", {"base": "no_such_solver"}, "base"),
        ("cost", {"base": {"alpha": 2.0}}, "base"),
        ("cost", {"backward_options": {"max_norm": 2.0}}, "backward_options"),
        ("stgu", {"attribution": "future"}, "attribution"),
        ("stgu", {"initial_groups": [[0, 1], [1, 2]]}, "initial_groups"),
        ("stgu", {"affinity_beta": 2.0}, "affinity_beta"),
        ("stgu", {"ap_damping": 0.2}, "ap_damping"),
        ("stgu", {"loss_weights": [1.0, float("nan")]}, "loss_weights"),
        ("stgu", {"initial_groups": [[0], [1]], "loss_weights": [1.0, 1.0, 1.0]}, "loss_weights"),
        ("mtgd", {"num_tasks": 2, "alpha": -1.0}, "alpha"),
        ("mtgd", {"num_tasks": 2, "neighbors": 0}, "neighbors"),
        ("mtgd", {"num_tasks": 3, "n_models": 7}, "n_models"),
        ("mtgd", {"preferences": [[1.0, -0.5]]}, "preferences"),
        ("mtgd", {"num_tasks": 2, "ideal": [0.0, 0.0, 0.0]}, "ideal"),
        ("mtgd", {}, "num_tasks"),
        ("mtgd", {"num_tasks": 2, "solver": "epo", "scalarization": "tchebycheff"}, "scalarization"),
    ],
)
def test_invalid_settings_raise_invalid_config_error_naming_the_field(name, settings, field):
    with pytest.raises(InvalidConfigError, match=rf"^{name}: .*{field}") as info:
        mtlsolve.get_strategy(name, **settings)
    assert isinstance(info.value, ValueError)  # mtlsolve.errors types are also the built-in a caller expects


def test_unknown_settings_list_the_valid_ones():
    with pytest.raises(InvalidConfigError, match=r"stgu: unknown setting\(s\) \['lr'\]; valid settings: solver='ls', "):
        mtlsolve.get_strategy("stgu", lr=1e-3)


def test_settings_are_frozen_values():
    settings = mtlsolve.get_strategy("cost", lora_targets="trunk.2", seed=3)
    assert settings.lora_targets == ("trunk.2",)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.seed = 4
    assert settings == mtlsolve.get_strategy("teleport", lora_targets=["trunk.2"], seed=3)
    assert attrs.evolve(settings, seed=4).seed == 4


# ------------------------------------------------------------------ settings from config
def test_settings_from_a_config_mapping_and_back():
    config = {"name": "cost", "base": {"name": "fairgrad", "alpha": 0.5}, "trigger": "fraction", "lora_rank": 2}
    settings = mtlsolve.strategy_from_config(config)
    assert type(settings) is COSTSettings
    assert (settings.base, settings.trigger, settings.lora_rank) == ({"name": "fairgrad", "alpha": 0.5}, "fraction", 2)
    assert settings.config()["name"] == "cost"
    assert mtlsolve.strategy_from_config(settings.config()) == settings
    mtgd = mtlsolve.strategy_from_config({"name": "mgd", "preferences": [[0.8, 0.2], [0.2, 0.8]], "reference": [2, 2]})
    assert mtgd.preferences == ((0.8, 0.2), (0.2, 0.8)) and mtgd.reference == (2.0, 2.0)
    assert mtgd.preference_grid().shape == (2, 2)


def test_config_errors():
    with pytest.raises(InvalidConfigError, match=r"needs a 'name' key; got keys \['trigger'\]"):
        mtlsolve.strategy_from_config({"trigger": "fraction"})
    with pytest.raises(InvalidConfigError, match="must be a mapping"):
        mtlsolve.strategy_from_config("cost")
    with pytest.raises(InvalidConfigError, match="'strategy' key"):
        from_config({"name": "cost"})


# ------------------------------------------------------------------ settings and runtime objects
def test_the_runtime_object_runs_with_the_settings_it_was_built_from():
    torch = pytest.importorskip("torch")
    from mtlsolve.adapters.strategies.stgu import STGU

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    settings = mtlsolve.get_strategy("stgu", warmup_iters=3, seed=1)
    built = settings.build(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), model=model)
    assert type(built) is STGU and built.settings is settings
    by_keywords = STGU(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), model=model, warmup_iters=3, seed=1)
    assert by_keywords.settings == settings
    by_config = from_config(
        {"strategy": "stgu", "warmup_iters": 3, "seed": 1},
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    )
    assert by_config.settings == settings
    with pytest.raises(InvalidConfigError, match="not both"):
        STGU(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), settings=settings, seed=2)
    with pytest.raises(InvalidConfigError, match="settings must be a STGUSettings"):
        STGU(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), settings=COSTSettings())
    assert settings_for(STGUSettings, None, {"seed": 5}).seed == 5


# ------------------------------------------------------------------ third-party plugins
_PLUGIN = '''
from typing import ClassVar
import attrs
from mtlsolve import StrategySettings, hookimpl

CALLS = []


@attrs.frozen(kw_only=True)
class WarmupSettings(StrategySettings):
    """Settings of a test strategy."""

    name: ClassVar[str] = {name!r}
    aliases: ClassVar[dict] = {{"warm_start": {{"steps": 7}}}}
    runtime: ClassVar[str] = "{module}_runtime:Warmup"
    paper: ClassVar[str] = "a test plugin"

    steps: int = attrs.field(default=10, validator=attrs.validators.ge(0))
    solver: str = "ls"

{extra}

@hookimpl
def register_strategies(register):
    CALLS.append(1)
    for cls in {classes}:
        register(cls)
'''

_RUNTIME = """
class Warmup:
    def __init__(self, *, settings, model):
        self.settings = settings
        self.model = model
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Installs a fake distribution whose plugin module registers a strategy; returns (distribution, module)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def install(
        distribution: str,
        *,
        name: str = "fake_warmup",
        extra: str = "",
        classes: str = "(WarmupSettings,)",
        source: str | None = None,
    ):
        module = f"fake_mtlsolve_strategy_{uuid.uuid4().hex[:10]}"
        entry_point = distribution.replace("-", "_")
        info = tmp_path / f"{entry_point}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[mtlsolve]\n{entry_point} = {module}\n")
        if source is None:
            source = _PLUGIN.format(name=name, module=module, extra=textwrap.dedent(extra), classes=classes)
        (tmp_path / f"{module}.py").write_text(source)
        (tmp_path / f"{module}_runtime.py").write_text(_RUNTIME)
        made.extend([module, f"{module}_runtime"])
        importlib.invalidate_caches()
        return distribution, module

    yield install
    for module in made:
        sys.modules.pop(module, None)


def test_a_third_party_strategy_is_found_through_its_hook(site):
    distribution, module = site("mtlsolve-fake-strategy")
    reg = Registry()
    assert "fake_warmup" in reg.available_strategies() and "cost" in reg.available_strategies()
    assert "fake_warmup" not in reg.available()
    entry, preset = reg.resolve_strategy("Fake-Warmup")
    assert (entry.distribution, entry.plugin) == (distribution, "mtlsolve_fake_strategy")
    assert sys.modules[module].CALLS == [1]
    assert reg.resolve_strategy("warm-start")[1] == {"steps": 7}
    assert reg.get_strategy("warm_start").steps == 7
    with pytest.raises(InvalidConfigError, match="presets"):
        reg.get_strategy("warm_start", steps=3)
    with pytest.raises(InvalidConfigError, match=r"fake_warmup: invalid setting steps=-1"):
        reg.get_strategy("fake_warmup", steps=-1)
    settings = reg.strategy_from_config({"name": "fake_warmup", "steps": 3})
    assert f"{module}_runtime" not in sys.modules  # the runtime is imported only when a strategy is built
    model = object()
    runtime = settings.build(model=model)
    assert type(runtime).__module__ == f"{module}_runtime" and runtime.settings is settings and runtime.model is model


def test_a_third_party_strategy_cannot_shadow_a_builtin(site):
    site("mtlsolve-fake-shadow-strategy", name="cost")
    reg = Registry()
    with pytest.warns(
        PluginWarning,
        match=r"strategy name 'cost' from distribution 'mtlsolve-fake-shadow-strategy'.*"
        r"with 'cost' from distribution 'mtlsolve'",
    ):
        entry, _ = reg.resolve_strategy("cost")
    assert entry.cls is COSTSettings
    with pytest.raises(InvalidConfigError, match="no strategy named"):  # a refused class registers no alias
        reg.resolve_strategy("warm_start")


_BAD = """
class NotSettings:
    name = "not_settings"


class NotAttrs(WarmupSettings):
    name: ClassVar[str] = "not_attrs"


@attrs.frozen(kw_only=True)
class BadRuntime(WarmupSettings):
    name: ClassVar[str] = "bad_runtime"
    runtime: ClassVar[str] = "no colon here"


@attrs.frozen(kw_only=True)
class BadName(WarmupSettings):
    name: ClassVar[str] = "Bad-Name"
    aliases: ClassVar[dict] = {}
"""


def test_invalid_strategy_classes_are_rejected_with_a_warning(site):
    site(
        "mtlsolve-fake-bad-strategy", extra=_BAD, classes="(NotSettings, NotAttrs, BadRuntime, BadName, WarmupSettings)"
    )
    reg = Registry()
    with pytest.warns(PluginWarning) as record:
        names = reg.available_strategies()
    messages = [str(w.message) for w in record]
    problems = [
        "is not a subclass of mtlsolve.strategy.StrategySettings",
        "is not an attrs class",
        "neither a class nor a 'module:Class' path",
        "invalid canonical name 'Bad-Name'",
    ]
    assert len(messages) == len(problems)
    for problem, message in zip(problems, messages):
        assert problem in message and "distribution 'mtlsolve-fake-bad-strategy'" in message
    assert "fake_warmup" in names and not {"not_settings", "not_attrs", "bad_runtime"} & set(names)


def test_a_strategy_hook_that_raises_warns_and_the_rest_works(site):
    source = (
        "from mtlsolve import hookimpl\n\n@hookimpl\ndef register_strategies(register):\n"
        "    raise KeyError('bad strategy hook')\n"
    )
    site("mtlsolve-fake-raising-strategy", source=source)
    site("mtlsolve-fake-good-strategy")
    reg = Registry()
    with pytest.warns(PluginWarning, match=r"failed while registering strategies \(KeyError.*bad strategy hook"):
        assert {"cost", "fake_warmup"} <= set(reg.available_strategies())
    assert "ls" in reg.available()


def test_a_settings_class_registered_directly():
    @attrs.frozen(kw_only=True)
    class Local(StrategySettings):
        name = "local_strategy"
        runtime = dict  # any class; build passes settings= and the runtime keywords
        rate: float = attrs.field(default=0.1, converter=float)

    reg = Registry(entry_points=lambda: [])
    reg.register_strategy(Local)
    assert reg.available_strategies() == ["local_strategy"]
    built = reg.get_strategy("Local-Strategy", rate="0.5").build(model="m")
    assert built == {"settings": Local(rate=0.5), "model": "m"}
    with pytest.raises(InvalidConfigError, match=r"local_strategy: invalid setting rate='fast'"):
        reg.get_strategy("local_strategy", rate="fast")


# ------------------------------------------------------------------ the example plugin's strategy
def test_the_example_plugin_registers_a_strategy_through_its_entry_point():
    try:
        importlib.metadata.distribution("mtlsolve-example-plugin")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - depends on the environment
        pytest.skip("mtlsolve-example-plugin is not installed: pip install -e examples/mtlsolve-example-plugin")
    torch = pytest.importorskip("torch")
    entry, _ = mtlsolve.registry.resolve_strategy("Warmup")
    assert (entry.name, entry.distribution, entry.plugin) == ("solver_warmup", "mtlsolve-example-plugin", "example")
    with pytest.raises(InvalidConfigError, match="solver_warmup: invalid setting warmup_steps=-1"):
        mtlsolve.get_strategy("solver_warmup", warmup_steps=-1)
    torch.manual_seed(0)
    trunk, heads = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    opt = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1)
    warmup = mtlsolve.strategy_from_config({"name": "solver_warmup", "solver": "mgda", "warmup_steps": 2}).build(
        shared=trunk
    )
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    used = []
    for _ in range(3):
        losses = ((heads(trunk(x)) - y) ** 2).mean(dim=0)
        used.append(warmup.adapter.solver.name)
        warmup.backward(losses)
        warmup.step(opt)
    assert used == ["ls", "ls", "mgda"] and warmup.steps == 3
