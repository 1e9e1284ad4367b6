"""The one registry type for everything a user can add: samplers, schedules, metrics,
models, references, claims (in the style of lm-evaluation-harness's registries). The
registries themselves are created in :mod:`convergence.core.registries`.

Each entry has a canonical name, aliases, metadata and either the object itself or a lazy
``"module:attr"`` path imported on first use. Lookup ignores case, spaces, ``_``, ``-``
(and reads ``+`` as ``p``: "DPM++ 2M" = "dpmpp_2m"), and an unknown name fails with the
closest known spellings. Third parties add entries three ways (docs/plugins.md):

- a Python entry point in the registry's group (``convergence.samplers``, …): a module
  (imported, it registers itself) or a ``module:attr`` object registered under the entry
  point's name, lazily;
- a Hydra ``_target_`` where a name is accepted (:meth:`Registry.from_target`);
- ``plugins=[module, …]`` in the config: modules imported before the run.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from convergence.core.errors import ConvergenceError

T = TypeVar("T")


def normalize(name: str) -> str:
    """The lookup key of a user-typed name: case, spaces, dashes, underscores and '+'."""
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower()).replace("+", "p")


def load_object(path: str) -> Any:
    """``"pkg.module:attr"`` (or ``"pkg.module.attr"``) -> the object, or a ConvergenceError."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConvergenceError(f"cannot import {path!r}: {e}") from None
    return obj


@dataclass
class Entry(Generic[T]):
    """One registered name. ``target`` is the object, or a ``module:attr`` string until
    first use; ``meta`` is free-form (samplers keep order, NFE per step, ... there)."""

    name: str
    target: Any
    aliases: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    #: where it came from: "builtin", "entry point <dist>", "_target_", "plugin"
    source: str = "builtin"

    @property
    def loaded(self) -> bool:
        return not isinstance(self.target, str)

    def load(self) -> T:
        if isinstance(self.target, str):
            self.target = load_object(self.target)
        return self.target


def _origin(obj: Any) -> tuple[str, str] | None:
    """Where a registered function was defined (module, qualified name); a spec's own
    function for registries that wrap one."""
    fn = getattr(obj, "sampler", None) or getattr(obj, "fn", None) or obj
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return (module, qualname) if module and qualname else None


def _registering_source() -> str:
    """"builtin" when the first frame outside the registries is convergence's own code."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in _REGISTRY_MODULES:
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return "builtin" if module.startswith("convergence.") else "plugin"


#: modules whose frames are skipped when finding who registers an entry
_REGISTRY_MODULES = {__name__, "convergence.core.registries"}


class Registry(Generic[T]):
    """Names (with aliases) -> objects, filled by decorators, entry points and plugins.

    ``builtins`` are modules imported on first lookup (they register with decorators);
    ``group`` is the entry-point group scanned then; ``wrap(name, obj, meta)`` turns what is
    registered (a function and its metadata) into what this registry stores (samplers: a
    spec with their claims); a ``"module:attr"`` path is imported on first use, so the
    stage that defines the spec need not be imported to create the registry.
    ``meta_keys``: the metadata a ``_target_`` node may set (its other keys bind options)."""

    def __init__(self, kind: str, group: str | None = None, builtins: Iterable[str] = (),
                 wrap: Callable[[str, Any, dict], Any] | str | None = None,
                 meta_keys: Iterable[str] = ()):
        self.kind = kind
        self.group = group
        self.builtins = tuple(builtins)
        self._wrap = wrap
        self.meta_keys = tuple(meta_keys)
        #: bumped by every change, so derived indexes know when to rebuild
        self.version = 0
        self._entries: dict[str, Entry[T]] = {}
        self._keys: dict[str, str] = {}   # normalized spelling -> canonical name
        self._loaded = False
        #: the runner resolves names in several threads at once (cross-cell batching): a
        #: second thread waits for the first one's imports instead of seeing half a registry
        self._lock = threading.RLock()

    # -- registering ---------------------------------------------------------------
    def wrap(self, name: str, obj: Any, meta: dict) -> Any:
        """What this registry stores for ``obj`` registered with ``meta``."""
        if self._wrap is None:
            return obj
        if isinstance(self._wrap, str):
            self._wrap = load_object(self._wrap)
        return self._wrap(name, obj, meta)

    def add(self, name: str, target: Any, *, aliases: Iterable[str] = (), replace: bool = False,
            source: str | None = None, **meta: Any) -> Entry[T]:
        """Register ``target`` (an object or a lazy ``"module:attr"``) under ``name``, through
        :meth:`wrap` when the registry has one. ``source`` defaults to "builtin" when
        registered from convergence's own modules, else "plugin"."""
        source = source or _registering_source()
        if self._wrap is not None:
            target = self.wrap(name, target, {"aliases": tuple(aliases), **meta})
            aliases, meta = getattr(target, "aliases", tuple(aliases)), {}
        key = normalize(name)
        if not key:
            raise ValueError(f"{self.kind} name {name!r} is empty")
        if name in self._entries and not replace:
            if _origin(self._entries[name].target) != _origin(target) or _origin(target) is None:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            replace = True  # the same function again: its module was imported anew
        taken = self._keys.get(key)
        if taken is not None and taken != name and not replace:
            raise ValueError(f"{self.kind} {name!r} clashes with {taken!r} (names ignore case, "
                             "spaces, '_' and '-')")
        entry: Entry[T] = Entry(name, target, tuple(aliases), dict(meta), source)
        self._entries[name] = entry
        self.version += 1
        self._keys[key] = name
        for alias in entry.aliases:  # the first registration of an alias keeps it
            self._keys.setdefault(normalize(alias), name)
        return entry

    def register(self, name: str, target: Any = None, *, aliases: Iterable[str] = (),
                 **meta: Any) -> Any:
        """``@reg.register("name", aliases=..., **meta)`` as a decorator right above the
        function, or ``reg.register("name", obj_or_"module:attr", ...)`` directly.

        The decorator also records ``meta`` on the function (``convergence_meta``), so an
        entry point or a ``_target_`` that names the function gets the same claims."""
        if target is not None:
            self.add(name, target, aliases=aliases, **meta)
            return target

        def deco(obj: T) -> T:
            self.add(name, obj, aliases=aliases, **meta)
            if meta and callable(obj):
                obj.convergence_meta = {**getattr(obj, "convergence_meta", {}), **meta}
            return obj
        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its spellings (tests; a plugin being reloaded)."""
        self._entries.pop(name)
        self._keys = {k: v for k, v in self._keys.items() if v != name}
        self.version += 1

    # -- discovery -----------------------------------------------------------------
    def load_builtins(self) -> None:
        """Import the built-in modules and scan the entry-point group (once)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for module in self.builtins:
                importlib.import_module(module)
            if self.group:
                for ep in entry_points(group=self.group):
                    self._add_entry_point(ep)

    def _add_entry_point(self, ep) -> None:
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        if ":" not in ep.value:       # a module: importing it registers its entries
            importlib.import_module(ep.value)
            return
        if ep.name in self._entries or normalize(ep.name) in self._keys:
            return                    # also registered by a module: the module wins
        if self._wrap is None:
            self.add(ep.name, ep.value, source=f"entry point {dist}")
            return
        obj = load_object(ep.value)   # its metadata lives on the object: load it now
        if normalize(ep.name) not in self._keys:  # importing it may have registered it
            self.add(ep.name, obj, source=f"entry point {dist}")

    # -- lookup --------------------------------------------------------------------
    def names(self) -> list[str]:
        self.load_builtins()
        return list(self._entries)

    def entries(self) -> dict[str, Entry[T]]:
        self.load_builtins()
        return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return normalize(str(name)) in self._keys

    def canonical(self, name: str, extra_names: tuple[str, ...] = ()) -> str:
        """The canonical name of any spelling, or a ConvergenceError with suggestions."""
        self.load_builtins()
        hit = self._keys.get(normalize(name))
        if hit is None:
            raise ConvergenceError(self.unknown_message(name, extra_names))
        return hit

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.canonical(name)]

    def get(self, name: str, extra_names: tuple[str, ...] = ()) -> T:
        """The object registered under any spelling of ``name`` (loaded if lazy)."""
        return self._entries[self.canonical(name, extra_names)].load()

    def suggestions(self, name: str, n: int = 5) -> list[str]:
        by_key: dict[str, str] = {}
        for e in self._entries.values():  # canonical names first, one spelling per key
            for spelling in (e.name, *e.aliases):
                by_key.setdefault(normalize(spelling), spelling)
        keys = difflib.get_close_matches(normalize(name), list(by_key), n=n, cutoff=0.6)
        return [by_key[k] for k in keys]

    def unknown_message(self, name: str, extra_names: tuple[str, ...] = ()) -> str:
        close = self.suggestions(name)
        if close:
            return f"unknown {self.kind} {name!r}; did you mean {', '.join(close)}?"
        known = ", ".join([*self._entries, *extra_names])
        return f"unknown {self.kind} {name!r}; known: {known}"

    # -- Hydra _target_ --------------------------------------------------------------
    def from_target(self, node: Mapping[str, Any]) -> str:
        """Register a ``{_target_: module.attr, name: ..., **meta_or_options}`` node and
        return its name, so a config can give an object where a name is accepted.

        Keys in :attr:`meta_keys` (plus ``name`` and ``aliases``) are metadata; any other key
        binds an option (Hydra ``instantiate`` with ``_partial_``)."""
        node = dict(node)
        target = node.get("_target_")
        if not isinstance(target, str) or not target:
            raise ConvergenceError(f"a {self.kind} given as a mapping needs a '_target_' "
                                   f"(module.attr), got {node!r}")
        name = str(node.pop("name", target))
        aliases = tuple(node.pop("aliases", ()) or ())
        meta = {k: node.pop(k) for k in list(node) if k in set(self.meta_keys)}
        options = {k: v for k, v in node.items() if k not in ("_target_", "_partial_")}
        if options:
            from hydra.utils import instantiate
            try:
                obj = instantiate({"_target_": target.replace(":", "."), "_partial_": True,
                                   **options})
            except Exception as e:  # Hydra wraps import errors in its own type
                raise ConvergenceError(f"cannot build {self.kind} {target!r}: {e}") from None
        else:
            obj = load_object(target)
        self.load_builtins()
        existing = self._keys.get(normalize(name))
        if existing is not None and self._entries[existing].source != "_target_":
            raise ConvergenceError(f"{self.kind} name {name!r} of _target_ {target!r} is "
                                   f"already taken by {existing!r}; give it another name")
        if self._wrap is not None:  # the function's own claims, then the node's
            meta = {**getattr(obj, "convergence_meta", {}), **meta}
        self.add(name, obj, aliases=aliases, replace=True, source="_target_", **meta)
        return name


def import_plugins(modules: Iterable[str]) -> None:
    """Import each plugin module (they register samplers, schedules, ... on import)."""
    for module in modules:
        try:
            importlib.import_module(str(module))
        except ImportError as e:
            raise ConvergenceError(f"plugin {module!r} cannot be imported: {e}") from None
