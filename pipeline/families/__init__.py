"""The model families: the one place that lists them (docs/MODEL.md; the contract:
``pipeline.families.base.Family``).

Adding a family is a folder beside ``diagonal/`` and ``twolayer/`` whose ``__init__`` builds a
``Family``, plus one line in ``_REGISTERED`` below. Everything else (the sweep-file grammar, the
parameter table, identities, plans, tasks, shard schemas, statistics, the report) reads the
registry; nothing else names a family.
"""

from __future__ import annotations

from pipeline.families import diagonal, twolayer
from pipeline.families.base import Family

_REGISTERED: tuple[Family, ...] = (
    diagonal.FAMILY,  # the first is the default: a sweep without model.family, a null column
    twolayer.FAMILY,
)

REGISTRY: dict[str, Family] = {f.name: f for f in _REGISTERED}
#: The values of ``model.family``, in registry order.
FAMILIES: tuple[str, ...] = tuple(REGISTRY)
#: The family of a sweep that names none, and of rows written before the ``family`` column.
DEFAULT_FAMILY: str = FAMILIES[0]
#: Every method key, in registry order, with its display name (``gd``: GD).
METHOD_NAMES: dict[str, str] = {}
for _family in _REGISTERED:
    for _key, _name in _family.methods.items():
        METHOD_NAMES.setdefault(_key, _name)
METHODS: tuple[str, ...] = tuple(METHOD_NAMES)
#: The families that define each method.
METHOD_FAMILIES: dict[str, tuple[str, ...]] = {
    m: tuple(f.name for f in _REGISTERED if m in f.methods) for m in METHODS}


def family(name: str | None) -> Family:
    """The registered family of that name (None: the default). KeyError for any other name:
    an unknown family reaches no engine."""
    key = DEFAULT_FAMILY if name is None else name
    if key not in REGISTRY:
        raise KeyError(f"unknown model family {name!r}; registered: {', '.join(FAMILIES)}")
    return REGISTRY[key]


def family_name(value) -> str:
    """A ``family`` column's value as a family name: null (rows written before the column
    existed) is the default family."""
    return DEFAULT_FAMILY if value is None or value != value else str(value)


def _check_registry() -> None:
    """Families must not collide: seed codes seed stored instances, columns share shards."""
    codes: dict[int, str] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for f in _REGISTERED:
        for code in f.seed_codes:
            if code in codes:
                raise ValueError(f"families {codes[code]} and {f.name} share seed code {code}")
            codes[code] = f.name
        for key, name in f.methods.items():
            if METHOD_NAMES[key] != name:
                raise ValueError(f"method {key} is {METHOD_NAMES[key]!r} and {name!r}")
        for column, kind in (*f.run_columns, *f.instance_columns):
            if column in kinds and kinds[column][0] != kind:
                raise ValueError(f"column {column} is {kinds[column][0]} in family "
                                 f"{kinds[column][1]} and {kind} in {f.name}")
            kinds[column] = (kind, f.name)


_check_registry()
