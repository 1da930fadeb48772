"""The run parameters, declared once (docs/SWEEP_FILES.md, "Keys" and "Run identity").

Every parameter a sweep can vary is one ``Param`` in ``PARAMS``: where it sits in a sweep file,
its type and constraint, its default, the method it belongs to, how it enters the run identity,
its Parquet column and the engine setting it feeds. The rest of the pipeline derives from this
table: validation and the canonical spec (``pipeline.spec``), run identity and the expansion
into runs (``pipeline.plan``), the engine configuration and the result rows (``pipeline.task``),
the shard schema (``pipeline.results.schema``) and the statistics' cell keys (``analysis.aggregate``).
``tests/test_parameters.py`` checks every derived place against the table.

The table is the sweep machinery's own parameters (``SHARED``) and every registered model
family's (``pipeline.families``), ordered by ``Param.slot``; a family also narrows shared ones
(its schemes, its defaults) through ``Family.overrides``.

Adding a parameter is one entry (here, or in its family's folder) plus the code that uses its
value. A new entry must use
``identity="unless_default"``: it then enters run ids and the spec hash only when a sweep sets
it to something other than its default, so every run_id written before it existed stays valid.
"""

from __future__ import annotations

from dataclasses import replace

from pipeline.families import FAMILIES, METHOD_FAMILIES, METHODS, REGISTRY
from pipeline.parameter import REQUIRED, Param, identity_items, identity_value, is_default  # noqa: F401 (re-exported)

__all__ = ["PARAMS", "BY_NAME", "FAMILIES", "METHODS", "METHOD_FAMILIES", "REQUIRED", "Param",
           "identity_items", "identity_value", "is_default"]

#: Every initialization scheme, in registry order; ``Param.by_family`` says which a family takes.
ALL_SCHEMES = tuple(dict.fromkeys(
    word for f in REGISTRY.values() for name, words, _ in f.overrides if name == "init"
    for word in words))

#: The parameters of the sweep machinery itself, shared by every family.
SHARED: tuple[Param, ...] = (
    Param("M", "problem", "M", "int", "measurements (rows of A)", ge=1, scope="instance",
          generated=True, slot=10),
    Param("N", "problem", "N", "int", "dimension (columns of A)", ge=1, scope="instance",
          generated=True, slot=20),
    Param("s", "problem", "sparsity", "int", "nonzeros of the ground truth x* (twolayer: per "
          "column of X*; omitted: X* dense)", ge=1, scope="instance", generated=True, slot=30),
    Param("init", "init", "scheme", "str", "the initialization scheme", default="constant",
          choices=ALL_SCHEMES, slot=40),
    Param("alpha", "init", "alpha", "float", "the initialization scale", gt=0, slot=50),
    Param("eta", "methods", "eta", "float", "the step size (WN-GD: its base step)", gt=0,
          methods=METHODS, engine="eta", slot=60),
    Param("max_iters", "train", "max_iters", "int", "the iteration budget", ge=1,
          engine="max_iters", slot=70),
    Param("tol", "train", "tol", "float", "the loss at which a run stops as converged",
          default=1e-12, ge=0, engine="tol", slot=80),
    Param("checkpoints", "train", "checkpoints", "int", "about how many loss-curve points",
          default=64, ge=2, axis=False, column=False, engine="checkpoints", slot=90),
    # added after wnsweep 0.1
    Param("family", "model", "family", "str", "the model family", default=FAMILIES[0],
          choices=FAMILIES, scope="instance", identity="unless_default", slot=100),
)


def _table() -> tuple[Param, ...]:
    """SHARED and every family's parameters, the latter marked as that family's, with each
    family's overrides of shared parameters, ordered by slot (unslotted ones last, as declared)."""
    overrides: dict[str, list] = {}
    for f in REGISTRY.values():
        for name, choices, default in f.overrides:
            overrides.setdefault(name, []).append((f.name, tuple(choices), default))
    params = [replace(p, by_family=tuple(overrides.get(p.name, ()))) for p in SHARED]
    params += [replace(p, families=(f.name,)) for f in REGISTRY.values() for p in f.params]
    names = [p.name for p in params]
    slots = [p.slot for p in params if p.slot is not None]
    if len(set(names)) != len(names) or len(set(slots)) != len(slots):
        raise ValueError(f"parameter names and slots must be unique: {names}, slots {slots}")
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"families override parameters that do not exist: {sorted(unknown)}")
    order = {p.name: i for i, p in enumerate(params)}  # declaration order
    return tuple(sorted(params, key=lambda p: (p.slot is None, p.slot or 0, order[p.name])))


PARAMS: tuple[Param, ...] = _table()

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
