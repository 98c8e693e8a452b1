"""The registry: plugin discovery through entry points, lookup of solvers and strategies by name and config.

Plugins are found through the ``mtlsolve`` entry-point group, the built-in
solver families and training strategies included, and loaded lazily the first
time a name is looked up. A plugin registers solver classes through the
``register_solvers`` hook and strategy settings classes
(:class:`mtlsolve.strategy.StrategySettings`) through ``register_strategies``.
Two environment variables control loading:

* ``MTLSOLVE_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the entry points of the
  ``mtlsolve`` distribution itself (the built-in solvers);
* ``MTLSOLVE_BLOCK_PLUGINS=a,b`` skips the entry points whose name or whose
  distribution name is listed.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pluggy

from mtlsolve import hookspecs
from mtlsolve.errors import InvalidConfigError, PluginError, PluginWarning, UnknownSolverError, UnknownStrategyError
from mtlsolve.solver import FAMILIES, PROPERTIES, Need, Solver
from mtlsolve.strategy import StrategySettings

DISABLE_AUTOLOAD_ENV = "MTLSOLVE_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "MTLSOLVE_BLOCK_PLUGINS"
OWN_DISTRIBUTION = "mtlsolve"


def normalise(name: str) -> str:
    """The lookup key of a name: lower case, without ``-``, ``_`` or spaces."""
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


@attrs.frozen
class Entry:
    """One registered solver (or strategy settings class): its class and where it came from."""

    cls: type[Solver] | type[StrategySettings]
    distribution: str
    plugin: str

    @property
    def name(self) -> str:
        return self.cls.name


@attrs.frozen
class _Alias:
    canonical: str
    preset: Mapping[str, Any]


class Registry:
    """Solver and strategy classes by canonical name, with aliases; filled once from the plugins."""

    def __init__(self, entry_points: Callable[[], Iterable[importlib.metadata.EntryPoint]] | None = None) -> None:
        self._entry_points = entry_points or (
            lambda: importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
        )
        self._lock = threading.RLock()
        self._loaded = False
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, _Alias] = {}
        self._strategies: dict[str, Entry] = {}
        self._strategy_aliases: dict[str, _Alias] = {}
        self.plugin_manager: pluggy.PluginManager | None = None

    # ---------------------------------------------------------------- loading
    def load(self) -> None:
        """Discover and register every plugin; runs once, later calls return at once."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            distributions: dict[str, str] = {}
            for ep in self._selected_entry_points():
                dist = _distribution_name(ep)
                try:
                    plugin = ep.load()
                    pm.register(plugin, name=ep.name)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not break the host
                    warnings.warn(
                        f"mtlsolve plugin {ep.name!r} from distribution {dist!r} failed to load "
                        f"({type(exc).__name__}: {exc}); its solvers are unavailable",
                        PluginWarning,
                        stacklevel=3,
                    )
                    continue
                distributions[ep.name] = dist
            hooks = (
                (pm.hook.register_solvers, "solvers", self.register),
                (pm.hook.register_strategies, "strategies", self.register_strategy),
            )
            for hook, what, add in hooks:
                for impl in hook.get_hookimpls():
                    dist = distributions.get(impl.plugin_name, "<unknown>")
                    try:
                        impl.function(register=self._plugin_register(add, dist, impl.plugin_name))
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:
                        warnings.warn(
                            f"mtlsolve plugin {impl.plugin_name!r} from distribution {dist!r} failed while "
                            f"registering {what} ({type(exc).__name__}: {exc})",
                            PluginWarning,
                            stacklevel=3,
                        )
            self.plugin_manager = pm
            self._loaded = True

    def _plugin_register(self, add: Callable[..., None], distribution: str, plugin: str) -> Callable[[type], None]:
        """The ``register`` callback a plugin's hook receives: an invalid class is skipped with a
        warning, so the plugin's other classes (and every other plugin) still register."""

        def register(cls: type) -> None:
            try:
                add(cls, distribution, plugin)
            except PluginError as exc:
                warnings.warn(f"{exc}; it is not registered", PluginWarning, stacklevel=2)

        return register

    def reload(self) -> None:
        """Forget everything and discover the plugins again (for tests and notebooks)."""
        with self._lock:
            self._loaded = False
            self._entries.clear()
            self._aliases.clear()
            self._strategies.clear()
            self._strategy_aliases.clear()
            self.load()

    def _selected_entry_points(self) -> list[importlib.metadata.EntryPoint]:
        blocked = {b.strip() for b in os.environ.get(BLOCK_ENV, "").split(",") if b.strip()}
        own_only = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")
        selected = []
        for ep in self._entry_points():
            dist = _distribution_name(ep)
            if ep.name in blocked or dist in blocked:
                continue
            if own_only and dist != OWN_DISTRIBUTION:
                continue
            selected.append(ep)
        # The built-in solvers register first, so a third-party clash never shadows them.
        return sorted(selected, key=lambda ep: _distribution_name(ep) != OWN_DISTRIBUTION)

    # ----------------------------------------------------------- registering
    def register(self, cls: type[Solver], distribution: str = "<direct>", plugin: str = "<direct>") -> None:
        """Add a solver class; a clash keeps the first registration and warns naming both sources."""
        _validate_solver_class(cls, distribution)
        self._add(self._entries, self._aliases, Entry(cls, distribution, plugin), "solver")

    def register_strategy(
        self, cls: type[StrategySettings], distribution: str = "<direct>", plugin: str = "<direct>"
    ) -> None:
        """Add a strategy settings class; a clash keeps the first registration and warns naming both sources."""
        _validate_strategy_class(cls, distribution)
        self._add(self._strategies, self._strategy_aliases, Entry(cls, distribution, plugin), "strategy")

    def _add(self, entries: dict[str, Entry], aliases: dict[str, _Alias], entry: Entry, kind: str) -> None:
        """Put ``entry`` under its canonical name and aliases unless another entry holds them."""
        cls = entry.cls
        with self._lock:
            names = [cls.name, *cls.aliases]
            for name in names:
                key = normalise(name)
                holder = _holder(entries, aliases, key)
                if holder is not None:
                    warnings.warn(
                        f"{kind} name {name!r} from distribution {entry.distribution!r} (plugin {entry.plugin!r}) "
                        f"clashes with {holder.name!r} from distribution {holder.distribution!r}; keeping the latter",
                        PluginWarning,
                        stacklevel=4,
                    )
                    if name == cls.name:
                        return
                    continue
                if name == cls.name:
                    entries[key] = entry
                else:
                    aliases[key] = _Alias(normalise(cls.name), dict(cls.aliases[name]))

    # ---------------------------------------------------------------- lookup
    def available(self) -> list[str]:
        """The sorted canonical names of every registered solver."""
        self.load()
        return sorted(e.name for e in self._entries.values())

    def entries(self) -> list[Entry]:
        """Every registered solver's entry (class, distribution, plugin), sorted by name."""
        self.load()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def resolve(self, name: str) -> tuple[Entry, Mapping[str, Any]]:
        """The entry a name or alias refers to, and the keyword arguments the alias presets."""
        self.load()
        if not isinstance(name, str):
            raise UnknownSolverError(f"a solver name must be a string, got {name!r}")
        found = _lookup(self._entries, self._aliases, name)
        if found is None:
            raise UnknownSolverError(
                f"no solver named {name!r}; available: {', '.join(self.available())}"
                + _suggestion(name, self._entries, self._aliases)
            )
        return found

    def get(self, name: str, **kwargs: Any) -> Solver:
        """A new solver instance by name or alias (case-, dash- and underscore-insensitive)."""
        entry, preset = self.resolve(name)
        return construct(entry.cls, _with_preset(name, entry, preset, kwargs), label=name)

    def from_config(self, config: Mapping[str, Any]) -> Solver:
        """A new solver from a mapping ``{"name": ..., **kwargs}`` such as a YAML or Hydra config gives."""
        if not isinstance(config, Mapping):
            raise InvalidConfigError(f"a solver config must be a mapping with a 'name' key, got {config!r}")
        kwargs = dict(config)
        name = kwargs.pop("name", None)
        if name is None:
            raise InvalidConfigError(f"a solver config needs a 'name' key; got keys {sorted(kwargs)}")
        return self.get(name, **kwargs)

    # ------------------------------------------------------------ strategies
    def available_strategies(self) -> list[str]:
        """The sorted canonical names of every registered training strategy."""
        self.load()
        return sorted(e.name for e in self._strategies.values())

    def strategy_entries(self) -> list[Entry]:
        """Every registered strategy's entry (settings class, distribution, plugin), sorted by name."""
        self.load()
        return sorted(self._strategies.values(), key=lambda e: e.name)

    def resolve_strategy(self, name: str) -> tuple[Entry, Mapping[str, Any]]:
        """The strategy entry a name or alias refers to, and the settings the alias presets."""
        self.load()
        found = _lookup(self._strategies, self._strategy_aliases, name) if isinstance(name, str) else None
        if found is None:
            raise UnknownStrategyError(
                f"no strategy named {name!r}; available: {', '.join(self.available_strategies())}"
                + (_suggestion(name, self._strategies, self._strategy_aliases) if isinstance(name, str) else "")
            )
        return found

    def get_strategy(self, name: str, **settings: Any) -> StrategySettings:
        """A strategy's validated settings by name or alias; ``.build(model=..., ...)`` makes the runtime object."""
        entry, preset = self.resolve_strategy(name)
        return construct_settings(entry.cls, _with_preset(name, entry, preset, settings), label=name)

    def strategy_from_config(self, config: Mapping[str, Any]) -> StrategySettings:
        """A strategy's settings from a mapping ``{"name": ..., **settings}`` such as a YAML or Hydra config gives."""
        if not isinstance(config, Mapping):
            raise InvalidConfigError(f"a strategy config must be a mapping with a 'name' key, got {config!r}")
        settings = dict(config)
        name = settings.pop("name", None)
        if name is None:
            raise InvalidConfigError(f"a strategy config needs a 'name' key; got keys {sorted(settings)}")
        return self.get_strategy(name, **settings)


def _holder(entries: Mapping[str, Entry], aliases: Mapping[str, _Alias], key: str) -> Entry | None:
    if key in entries:
        return entries[key]
    if key in aliases:
        return entries[aliases[key].canonical]
    return None


def _suggestion(name: str, entries: Mapping[str, Entry], aliases: Mapping[str, _Alias]) -> str:
    """``"; did you mean 'x'?"`` naming up to three registered names closest to ``name`` (canonical names
    and aliases compared as lookup keys by :func:`difflib.get_close_matches`), or ``""`` if none is close."""
    keys = {key: entry.name for key, entry in entries.items()}
    for key, entry in entries.items():
        for alias in entry.cls.aliases:  # an alias is suggested as its class spells it
            held = aliases.get(normalise(alias))
            if held is not None and held.canonical == key:
                keys.setdefault(normalise(alias), alias)
    close = difflib.get_close_matches(normalise(name), list(keys), n=6, cutoff=0.7)
    names = [repr(n) for n in dict.fromkeys(keys[key] for key in close)][:3]
    if not names:
        return ""
    return "; did you mean " + (" or ".join(names) if len(names) < 3 else f"{names[0]}, {names[1]} or {names[2]}") + "?"


def _lookup(
    entries: Mapping[str, Entry], aliases: Mapping[str, _Alias], name: str
) -> tuple[Entry, Mapping[str, Any]] | None:
    key = normalise(name)
    if key in entries:
        return entries[key], {}
    if key in aliases:
        alias = aliases[key]
        return entries[alias.canonical], alias.preset
    return None


def _with_preset(name: str, entry: Entry, preset: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` over the alias preset; a keyword that contradicts the preset is refused."""
    clash = {k for k in preset if k in kwargs and kwargs[k] != preset[k]}
    if clash:
        raise InvalidConfigError(
            f"{name!r} presets {dict((k, preset[k]) for k in clash)}; use {entry.name!r} to set them yourself"
        )
    return {**preset, **kwargs}


def construct(cls: type[Solver], kwargs: Mapping[str, Any], label: str | None = None) -> Solver:
    """Build ``cls(**kwargs)``, turning unknown or invalid arguments into an error that lists the fields."""
    label = label or cls.name
    fields = hyperparameters(cls)
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise InvalidConfigError(f"{label}: unknown argument(s) {unknown}; valid fields: {_describe(fields)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        field = _refused_field(cls, kwargs)
        which = f" {field}={kwargs[field]!r}" if field else ""
        raise InvalidConfigError(
            f"{label}: invalid argument{which} ({exc}); valid fields: {_describe(fields)}"
        ) from exc


def construct_settings(
    cls: type[StrategySettings], settings: Mapping[str, Any], label: str | None = None
) -> StrategySettings:
    """Build ``cls(**settings)``; an unknown or refused setting raises InvalidConfigError naming it."""
    label = label or cls.name
    fields = hyperparameters(cls)
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise InvalidConfigError(f"{label}: unknown setting(s) {unknown}; valid settings: {_describe(fields)}")
    try:
        return cls(**settings)
    except InvalidConfigError as exc:  # a cross-field check, already naming its settings
        raise InvalidConfigError(f"{label}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        field = _refused_field(cls, settings, validators=True)
        which = f" {field}={settings[field]!r}" if field else ""
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else exc  # attrs validators add more args
        raise InvalidConfigError(
            f"{label}: invalid setting{which} ({reason}); valid settings: {_describe(fields)}"
        ) from exc


#: attrs >= 24.1 wraps converters that take the instance in attrs.Converter; those are not tried alone
_CONVERTER_OBJECTS = getattr(attrs, "Converter", ())


def _refused_field(cls: type, kwargs: Mapping[str, Any], validators: bool = False) -> str | None:
    """The first argument whose field converter (and, with ``validators``, whose field validator)
    refuses it on its own, to name it in the error."""
    for f in attrs.fields(cls):
        name = f.alias or f.name
        if name not in kwargs:
            continue
        value = kwargs[name]
        if callable(f.converter) and not isinstance(f.converter, _CONVERTER_OBJECTS):
            try:
                value = f.converter(value)
            except Exception:
                return name
        if validators and f.validator is not None:
            try:
                f.validator(None, f, value)
            except Exception:
                return name
    return None


def hyperparameters(cls: type[Solver]) -> dict[str, Any]:
    """The constructor fields of a solver class and their defaults (``attrs.NOTHING`` when required)."""
    out = {}
    for f in attrs.fields(cls):
        if not f.init:
            continue
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else attrs.NOTHING
        out[f.alias or f.name] = default
    return out


def _describe(fields: Mapping[str, Any]) -> str:
    parts = [name if d is attrs.NOTHING else f"{name}={d!r}" for name, d in fields.items()]
    return ", ".join(parts) if parts else "(none)"


def _validate_solver_class(cls: Any, distribution: str) -> None:
    problem = None
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        problem = "is not a subclass of mtlsolve.Solver"
    elif "__attrs_attrs__" not in vars(cls):  # attrs.has() is also true for an undecorated subclass
        problem = "is not an attrs class (decorate it with @attrs.define(kw_only=True, eq=False))"
    elif not isinstance(cls.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name):
        problem = f"has an invalid canonical name {cls.name!r} (lower case with underscores)"
    elif cls.family not in FAMILIES:
        problem = f"declares unknown family {cls.family!r}; valid: {sorted(FAMILIES)}"
    elif not all(isinstance(n, Need) for n in cls.needs):
        problem = f"declares needs that are not mtlsolve.Need values: {cls.needs}"
    elif invalid := _invalid_capabilities(cls):
        problem = f"declares invalid training-loop capabilities: {invalid}"
    elif not isinstance(cls.aliases, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in cls.aliases.items()
    ):
        problem = f"declares aliases that are not a mapping of names to preset arguments: {cls.aliases!r}"
    elif set(cls.properties) - set(PROPERTIES):
        problem = f"claims unknown properties {sorted(set(cls.properties) - set(PROPERTIES))}"
    elif not _valid_schema(cls.state_schema):
        problem = (
            f"declares an invalid state_schema {cls.state_schema!r} (a mapping of state keys to None or "
            'to shape tuples of "m", "n", non-negative ints or None)'
        )
    if problem:
        raise PluginError(f"{cls!r} registered by distribution {distribution!r} {problem}")


def _invalid_capabilities(cls: type[Solver]) -> str | None:
    """Why the class's declarations do not make a :class:`mtlsolve.solver.Capabilities` record, or None."""
    try:
        cls.capabilities  # noqa: B018 - builds and validates the record
    except InvalidConfigError as error:
        return str(error)
    return None


def _valid_schema(schema: Any) -> bool:
    """Whether ``schema`` has the form :attr:`mtlsolve.Solver.state_schema` documents."""
    if not isinstance(schema, Mapping):
        return False
    for key, spec in schema.items():
        if not isinstance(key, str):
            return False
        if spec is None:
            continue
        if not isinstance(spec, tuple):
            return False
        for size in spec:
            named = size in ("m", "n") if isinstance(size, str) else False
            count = isinstance(size, int) and not isinstance(size, bool) and size >= 0
            if not (size is None or named or count):
                return False
    return True


def _validate_strategy_class(cls: Any, distribution: str) -> None:
    problem = None
    if not (isinstance(cls, type) and issubclass(cls, StrategySettings)):
        problem = "is not a subclass of mtlsolve.strategy.StrategySettings"
    elif "__attrs_attrs__" not in vars(cls):
        problem = "is not an attrs class (decorate it with @attrs.frozen(kw_only=True))"
    elif not isinstance(cls.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name):
        problem = f"has an invalid canonical name {cls.name!r} (lower case with underscores)"
    elif not isinstance(cls.aliases, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in cls.aliases.items()
    ):
        problem = f"declares aliases that are not a mapping of names to preset settings: {cls.aliases!r}"
    elif not (
        isinstance(cls.runtime, type)
        or (isinstance(cls.runtime, str) and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", cls.runtime))
    ):
        problem = f"declares runtime {cls.runtime!r}, which is neither a class nor a 'module:Class' path"
    if problem:
        raise PluginError(f"{cls!r} registered by distribution {distribution!r} {problem}")


def _distribution_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None and dist.name else "<unknown>"


#: The process-wide registry behind mtlsolve.get / available / from_config and the strategy lookups.
registry = Registry()

# The module mirrors the process-wide registry's methods, so ``mtlsolve.registry`` (this
# module) serves both ``mtlsolve.registry.resolve(...)`` and ``mtlsolve.registry.Registry``.

load = registry.load
reload = registry.reload
register = registry.register
available = registry.available
entries = registry.entries
resolve = registry.resolve
get = registry.get
from_config = registry.from_config
register_strategy = registry.register_strategy
available_strategies = registry.available_strategies
strategy_entries = registry.strategy_entries
resolve_strategy = registry.resolve_strategy
get_strategy = registry.get_strategy
strategy_from_config = registry.strategy_from_config
