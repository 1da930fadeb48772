"""One run parameter: its declaration (``Param``) and how its values enter a run's identity
(docs/SWEEP_FILES.md, "Keys" and "Run identity").

The table of every parameter is ``pipeline.parameters``: the sweep machinery's own entries and
those each model family declares (``pipeline.families``). This module is the record they share,
so that a family can declare its parameters without importing the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: ``Param.default`` of a parameter the sweep file must give.
REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One run parameter.

    name:       the Parquet column, the key in run identities, and the name code uses.
    section:    the sweep file section holding it (``problem``, ``model``, ``init``, ``methods``,
                ``train``); ``key`` is its key there (under ``methods.<method>`` for method axes).
    kind:       ``int`` | ``float`` | ``str``; ``gt``/``ge`` bound numbers, ``choices`` words.
    default:    used when the file omits the key; ``REQUIRED`` if it must be given.
    scope:      ``instance`` (identifies a problem instance, shared by its runs) or ``run``.
    methods:    the methods whose own axis it is (``None``: an axis shared by every method).
    axis:       False for a single value that cannot be swept (``train.checkpoints``).
    column:     whether it is a column of the runs shard (instance parameters: also of the
                instances shard) and a statistics cell key.
    engine:     the ``pipeline.families.diagonal.dynamics.RunConfig`` field it sets, if any.
    identity:   ``always``: in every run id, null where it does not apply (the parameters of
                wnsweep 0.1); ``unless_default``: in the run id and the spec hash only when it
                applies and differs from its default (every parameter added since).
    generated:  only for generated problems (absent when the problem is an instance file).
    slot:       its place in the table: the column order of the shards and the order in which runs
                are expanded (so also which runs share a task). Fixed once results exist. A
                parameter without one goes after every slotted one, in declaration order.
    families:   the model families (``pipeline.families.FAMILIES``) it applies to (``None``:
                every family; a family's own parameters: that family, set by the registry). Where it
                does not apply to a run's family it is null, and it enters the run id like a
                parameter that does not apply to the run's method (``always``: null;
                ``unless_default``: absent). A sweep file may give it only when one of its
                families is among these.
    hint:       what a message adds when a required parameter is missing (how to choose).
    by_family:  per-family overrides, ``((family, choices, default), ...)``: the words that
                family takes (``()``: all of ``choices``) and its default (``REQUIRED``: must be
                given; ``None``: may be omitted, the value is then null). Set by the registry
                from each family's ``Family.overrides``.
    """

    name: str
    section: str
    key: str
    kind: str
    doc: str
    default: Any = REQUIRED
    gt: float | None = None
    ge: float | None = None
    choices: tuple[str, ...] = ()
    scope: str = "run"
    methods: tuple[str, ...] | None = None
    axis: bool = True
    column: bool = True
    engine: str | None = None
    identity: str = "always"
    generated: bool = False
    slot: int | None = None
    hint: str = ""
    families: tuple[str, ...] | None = None
    by_family: tuple[tuple[str, tuple[str, ...], Any], ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def field(self, method: str | None = None) -> str:
        """The dotted sweep-file field (``model.depth``, ``methods.wn.eta_ratio``)."""
        if self.methods is not None:
            return f"methods.{method or '|'.join(self.methods)}.{self.key}"
        return f"{self.section}.{self.key}"

    def rule(self) -> str:
        """What values are allowed, as a message fragment."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        kind = "integers" if self.kind == "int" else "numbers"
        bound = f" > {_fmt(self.gt)}" if self.gt is not None else \
            f" >= {_fmt(self.ge)}" if self.ge is not None else ""
        return f"{'an integer' if not self.axis else kind}{bound}"

    def applies_to(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def applies_to_family(self, family: str) -> bool:
        return self.families is None or family in self.families

    def choices_for(self, family: str) -> tuple[str, ...]:
        """The words ``family`` takes (``choices`` unless ``by_family`` narrows them)."""
        for fam, choices, _ in self.by_family:
            if fam == family and choices:
                return choices
        return self.choices

    def default_for(self, family: str) -> Any:
        """The default for ``family`` (``by_family`` overrides ``default``)."""
        for fam, _, default in self.by_family:
            if fam == family:
                return default
        return self.default


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def is_default(param: Param, value: Any) -> bool:
    """Whether ``value`` equals the parameter's default (numbers to 12 significant digits)."""
    if param.required:
        return False
    return identity_value(value) == identity_value(param.default)


def identity_value(value: Any) -> Any:
    """How a value enters a run id: ints as ints, floats to 12 significant digits (so that
    last-bit differences of a platform's logspace cannot change an id), words as they are."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    return format(float(value), ".12g")


def identity_items(params: tuple[Param, ...], values: dict[str, Any],
                   method: str | None = None, *, family: str) -> dict[str, Any]:
    """The identity entries of ``params`` for one run (or instance) with these ``values``.

    ``always`` parameters are present with ``None`` where they do not apply to ``method`` or
    ``family``; ``unless_default`` ones only where they apply and differ from the default."""
    out: dict[str, Any] = {}
    for p in params:
        applies = (method is None or p.applies_to(method)) and p.applies_to_family(family)
        value = values.get(p.name) if applies else None
        if p.identity == "always":
            out[p.name] = identity_value(value)
        elif applies and value is not None and not is_default(p, value):
            out[p.name] = identity_value(value)
    return out
