"""The run parameters, declared once (docs/SWEEP_FILES.md, "Keys" and "Run identity").

Every parameter a sweep can vary is one ``Param`` in ``PARAMS``: where it sits in a sweep file,
its type and constraint, its default, the method it belongs to, how it enters the run identity,
its Parquet column and the engine setting it feeds. The rest of the pipeline derives from this
table: validation and the canonical spec (``pipeline.spec``), run identity and the expansion
into runs (``pipeline.plan``), the engine configuration and the result rows (``pipeline.task``),
the shard schema (``pipeline.schema``) and the statistics' cell keys (``analysis.aggregate``).
``tests/test_parameters.py`` checks every derived place against the table.

Adding a parameter is one entry here plus the code that uses its value. A new entry must use
``identity="unless_default"``: it then enters run ids and the spec hash only when a sweep sets
it to something other than its default, so every run_id written before it existed stays valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.dynamics import SCHEDULES
from pipeline.initialization import SCHEMES
from pipeline.models import SIGNS
from pipeline.twolayer import SCHEMES as TWOLAYER_SCHEMES

#: ``Param.default`` of a parameter the sweep file must give.
REQUIRED = object()
#: The methods and, in a sweep file, the keys of ``methods``.
METHODS = ("gd", "wn")
#: The model families (``model.family``): ``diagonal`` (docs/MODEL.md, the default) and
#: ``twolayer`` (single-hidden-layer linear networks, ``pipeline.twolayer``).
FAMILIES = ("diagonal", "twolayer")
#: The families each method is defined for (WN-GD: the diagonal family only).
METHOD_FAMILIES: dict[str, tuple[str, ...]] = {"gd": FAMILIES, "wn": ("diagonal",)}
#: Every initialization scheme; ``Param.by_family`` says which a family takes.
ALL_SCHEMES = (*SCHEMES, *(s for s in TWOLAYER_SCHEMES if s not in SCHEMES))

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
    engine:     the ``pipeline.dynamics.RunConfig`` field it sets, if any.
    identity:   ``always``: in every run id, null where it does not apply (the parameters of
                wnsweep 0.1); ``unless_default``: in the run id and the spec hash only when it
                applies and differs from its default (every parameter added since).
    generated:  only for generated problems (absent when the problem is an instance file).
    families:   the model families (``FAMILIES``) it applies to (``None``: every family). Where it
                does not apply to a run's family it is null, and it enters the run id like a
                parameter that does not apply to the run's method (``always``: null;
                ``unless_default``: absent). A sweep file may give it only when one of its
                families is among these.
    by_family:  per-family overrides, ``((family, choices, default), ...)``: the words that
                family takes (``()``: all of ``choices``) and its default (``REQUIRED``: must be
                given; ``None``: may be omitted, the value is then null).
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


PARAMS: tuple[Param, ...] = (
    Param("sign", "problem", "sign", "str", "the model: nonneg x~ = w^L, signed x~ = u^L - v^L",
          default="nonneg", choices=SIGNS, scope="instance", families=("diagonal",)),
    Param("M", "problem", "M", "int", "measurements (rows of A)", ge=1, scope="instance",
          generated=True),
    Param("N", "problem", "N", "int", "dimension (columns of A)", ge=1, scope="instance",
          generated=True),
    Param("s", "problem", "sparsity", "int", "nonzeros of the ground truth x* (twolayer: per "
          "column of X*; omitted: X* dense)", ge=1, scope="instance", generated=True,
          by_family=(("twolayer", (), None),)),
    Param("L", "model", "depth", "int", "the depth L", ge=2, engine="depth",
          families=("diagonal",)),
    Param("init", "init", "scheme", "str", "the initialization scheme", default="constant",
          choices=ALL_SCHEMES,
          by_family=(("diagonal", SCHEMES, "constant"), ("twolayer", TWOLAYER_SCHEMES, "random"))),
    Param("alpha", "init", "alpha", "float", "the initialization scale", gt=0),
    Param("eta", "methods", "eta", "float", "the step size (WN-GD: its base step)", gt=0,
          methods=METHODS, engine="eta"),
    Param("eta_ratio", "methods", "eta_ratio", "float", "WN-GD's learning-rate ratio eta_r / eta_u",
          default=1.0, gt=0, methods=("wn",), engine="eta_ratio"),
    Param("schedule", "methods", "schedule", "str", "WN-GD's step schedule", default="constant",
          choices=SCHEDULES, methods=("wn",), engine="schedule"),
    Param("max_iters", "train", "max_iters", "int", "the iteration budget", ge=1,
          engine="max_iters"),
    Param("tol", "train", "tol", "float", "the loss at which a run stops as converged",
          default=1e-12, ge=0, engine="tol"),
    Param("checkpoints", "train", "checkpoints", "int", "about how many loss-curve points",
          default=64, ge=2, axis=False, column=False, engine="checkpoints"),
    # the two-layer family (docs/MODEL.md, "The two-layer family"); added after wnsweep 0.1
    Param("family", "model", "family", "str", "the model family", default="diagonal",
          choices=FAMILIES, scope="instance", identity="unless_default"),
    Param("outputs", "problem", "outputs", "int", "outputs K (columns of X* and Y)", default=1,
          ge=1, scope="instance", generated=True, families=("twolayer",),
          identity="unless_default"),
    Param("width", "model", "width", "int", "the hidden width h", ge=1, families=("twolayer",),
          identity="unless_default"),
    Param("imbalance", "init", "imbalance", "float", "the layer imbalance lambda: U0 scaled by "
          "e^{lambda/2}, V0 by e^{-lambda/2}", default=0.0, families=("twolayer",),
          identity="unless_default"),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
INSTANCE_PARAMS = tuple(p for p in PARAMS if p.scope == "instance")
RUN_PARAMS = tuple(p for p in PARAMS if p.scope == "run")
#: Run parameters shared by every method (swept outside ``methods``), in expansion order.
SHARED_RUN_PARAMS = tuple(p for p in RUN_PARAMS if p.methods is None)
#: The keys each method takes under ``methods.<method>``.
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    m: tuple(p.key for p in RUN_PARAMS if p.methods is not None and m in p.methods)
    for m in METHODS
}
#: Parameter columns of the runs shard, in schema order.
COLUMNS = tuple(p.name for p in PARAMS if p.column)
INSTANCE_COLUMNS = tuple(p.name for p in INSTANCE_PARAMS if p.column)
#: Columns of the parameters set per method (null for the methods they are not of).
METHOD_COLUMNS = tuple(p.name for p in RUN_PARAMS if p.methods is not None and p.column)
_FIRST_METHOD_OWN = next(i for i, c in enumerate(COLUMNS) if BY_NAME[c].methods is not None)
#: The columns that identify a statistics cell: every parameter column, and the method just
#: before the first method-own parameter.
CELL_KEYS = (*COLUMNS[:_FIRST_METHOD_OWN], "method", *COLUMNS[_FIRST_METHOD_OWN:])
#: The columns on which a WN-GD run and the GD run it is compared with agree (besides the step
#: size, which analysis.paired_ratios matches separately): its instance and every shared axis.
PAIR_KEYS = ("instance_id", *(p.name for p in SHARED_RUN_PARAMS if p.column))


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
                   method: str | None = None, family: str = "diagonal") -> dict[str, Any]:
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
