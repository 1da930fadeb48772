"""The axis grammar of sweep files, and generated values that are the same bits on every machine
(docs/SWEEP_FILES.md, "Axes").

The grammar (``parse_axis``): a scalar, a list, ``{values: [...]}``, ``{logspace: [lo_exp, hi_exp,
n]}`` or ``{linspace: [lo, hi, n]}``; numbers finite, never booleans or strings, integers where
the kind says so, no duplicates at the precision of run ids. Errors are ``AxisError(field,
message)``; ``pipeline.spec`` adds the file's name. Which keys are axes, and of what kind, is the
parameter table's (``pipeline.parameters``).

Generated values:

``{logspace: [lo_exp, hi_exp, n]}`` and ``{linspace: [lo, hi, n]}`` name points of a grid; the
floats a run uses, and the spec hash, must not depend on the CPU that expands the file.
``numpy.logspace`` does: its power function takes another SIMD path on AVX-512 machines and can
differ in the last bit (``np.logspace(-3, 0, 13)[7]`` is 0.056234132519034905 there and
0.05623413251903491 elsewhere). So the grids are computed here, with numpy's formula and without
any operation whose result a platform may choose:

* the points (linspace values, logspace exponents) follow ``numpy.linspace`` step by step:
  ``step = (hi - lo) / (n - 1)``, point ``i`` is ``i * step + lo``, the last point is ``hi``.
  These are IEEE-754 additions, multiplications and divisions of Python floats, which every
  conforming machine rounds identically;
* ``10 ** e`` of each exponent (exactly the float ``e``) is computed in 60-digit decimal
  arithmetic as ``exp(e ln 10)`` (Python's ``decimal``: software, correctly rounded ``exp``
  and ``ln``), then rounded to the nearest float64. The intermediate is within 1e-55 relative of
  ``10 ** e``, so the result is the correctly rounded power (barring a power within 1e-55 of a
  tie between two floats) and, in every case, the same bits on every machine.

For every sweep file in the repository these are exactly the values numpy gives where its power
function is libm's ``pow`` (numpy's non-AVX-512 path, on which the pinned spec hashes of
tests/data/identities.json were first computed), so no stored result changes meaning.
"""

from __future__ import annotations

import decimal
import math
from fractions import Fraction
from typing import Any

from pipeline.parameter import identity_value

__all__ = ["AxisError", "describe", "linspace", "logspace", "parse_axis", "scalar_int"]

#: A logspace or linspace longer than this is surely a typo.
_MAX_AXIS = 100_000


class AxisError(ValueError):
    """A value or axis that breaks the grammar: ``field`` (dotted) and what is allowed."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


_CONTEXT = decimal.Context(prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])
_LN10 = _CONTEXT.ln(decimal.Decimal(10))


def linspace(lo: float, hi: float, n: int) -> list[float]:
    """``n`` evenly spaced floats from ``lo`` to ``hi`` (just ``lo`` when ``n == 1``), rounded
    step by step as ``numpy.linspace`` rounds them."""
    lo, hi = float(lo), float(hi)
    if n == 1:
        return [lo]
    step = (hi - lo) / (n - 1)
    if step == 0.0:  # numpy's branch for a step that underflows: scale by the whole range
        points = [(i / (n - 1)) * (hi - lo) + lo for i in range(n)]
    else:
        points = [i * step + lo for i in range(n)]
    points[-1] = hi
    return [p + 0.0 for p in points]  # + 0.0: -0.0 becomes 0.0, one canonical form


def logspace(lo_exp: float, hi_exp: float, n: int) -> list[float]:
    """``10 ** e`` for the exponents ``linspace(lo_exp, hi_exp, n)``, each power the float
    nearest the exact power of its exponent (module docstring). A power beyond the float range
    is ``inf`` (above) or ``0.0`` (below), for the caller to reject as numpy's would be."""
    return [power_of_ten(e) for e in linspace(lo_exp, hi_exp, n)]


def power_of_ten(e: float) -> float:
    """The float nearest ``10 ** e``, computed without hardware floating point."""
    exact = Fraction(e)
    if exact.denominator == 1:
        try:
            return float(Fraction(10) ** exact.numerator)  # float(Fraction) rounds correctly
        except OverflowError:  # an exact power beyond the float range
            return float("inf")
    exponent = _CONTEXT.divide(decimal.Decimal(exact.numerator), decimal.Decimal(exact.denominator))
    return float(_CONTEXT.exp(_CONTEXT.multiply(exponent, _LN10)))  # float(Decimal) rounds correctly


# ---------------------------------------------------------------------------- the grammar

def describe(v: Any) -> str:
    """How a wrong value reads in a message: ``string 'abc'``, ``boolean true``, ``a list``..."""
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, str):
        return f"string {v!r}"
    if v is None:
        return "nothing (null)"
    if isinstance(v, (list, dict)):
        kind = "list" if isinstance(v, list) else "mapping"
        return f"a {kind}" if v else f"an empty {kind}"
    return repr(v)


def fmt_value(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def number(v: Any, field: str, integer: bool) -> int | float:
    """A finite int or float, never a bool or string. With ``integer``, an integral float
    becomes an int."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AxisError(field, f"expected {'an integer' if integer else 'a number'}, "
                        f"got {describe(v)}")
    if isinstance(v, int) and integer:
        return v
    try:
        x = float(v)
    except OverflowError:  # an int beyond the float range
        x = math.inf if v > 0 else -math.inf
    if not math.isfinite(x):
        raise AxisError(field, f"values must be finite, got {x}")
    if not integer:
        return x + 0.0  # + 0.0 turns -0.0 into 0.0: one canonical form
    if v == round(v):
        return int(round(v))
    raise AxisError(field, f"expected an integer, got {v}")

def scalar_int(v: Any, field: str, minimum: int) -> int:
    """A single integer >= minimum (not an axis)."""
    if isinstance(v, (list, dict)):
        raise AxisError(field, f"must be a single integer >= {minimum}, not an axis")
    n = number(v, field, integer=True)
    if n < minimum:
        raise AxisError(field, f"must be an integer >= {minimum}, got {n}")
    return n

def parse_axis(raw: Any, field: str, kind: str, choices: tuple[str, ...] = (),
         gt: float | None = None, ge: float | None = None) -> tuple:
    """Expand an axis of ``kind`` 'int' | 'float' | 'str' into a tuple of plain values.

    Forms: a scalar, a list, ``{values: [...]}``, ``{logspace: [lo_exp, hi_exp, n]}``,
    ``{linspace: [lo, hi, n]}``. Rejects an empty axis, duplicate values, wrong types,
    non-finite numbers, words not in ``choices`` and numbers not ``> gt`` / ``>= ge``.
    """
    if isinstance(raw, dict):
        form = next(iter(raw)) if len(raw) == 1 else None
        if form not in ("values", "logspace", "linspace"):
            raise AxisError(field, "an axis mapping takes exactly one key: values, logspace or "
                            f"linspace; got {', '.join(map(str, raw)) or 'none'}")
        arg = raw[form]
        if form == "values" and not isinstance(arg, list):
            raise AxisError(field, f"values: expected a list, got {describe(arg)}")
        if form != "values" and kind == "str":
            raise AxisError(field, f"{form} makes numbers; allowed: {', '.join(choices)}")
        items = arg if form == "values" else space(form, arg, field)
    elif raw is None:
        raise AxisError(field, "empty value; give a value, a list or "
                        "{values|logspace|linspace: ...}")
    else:
        items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise AxisError(field, "empty axis; give at least one value")

    out: list = []
    for v in items:
        if kind == "str":
            if not isinstance(v, str) or v not in choices:
                raise AxisError(field, f"must be one of {', '.join(choices)}; "
                                f"got {describe(v)}")
        else:
            v = number(v, field, integer=(kind == "int"))
        if identity_value(v) in {identity_value(u) for u in out}:
            raise AxisError(field, f"duplicate value {fmt_value(v)} in the axis (equal to "
                            "12 significant digits, the precision of run ids: it would "
                            "repeat runs)")
        out.append(v)
    for v in out:
        if (gt is not None and not v > gt) or (ge is not None and not v >= ge):
            rule = f"> {gt}" if gt is not None else f">= {ge}"
            raise AxisError(field, f"values must be {rule}, got {v}")
    return tuple(out)

def space(form: str, arg: Any, field: str) -> list[float]:
    """``[lo, hi, n]`` -> n floats: numpy.logspace's (exponents) or numpy.linspace's grid,
    computed so that every machine gets the same bits (``pipeline.axes``)."""
    usage = f"{form}: expected [{'lo_exp, hi_exp' if form == 'logspace' else 'lo, hi'}, n]"
    if not isinstance(arg, list) or len(arg) != 3:
        got = arg if isinstance(arg, list) else describe(arg)
        raise AxisError(field, f"{usage}, got {got}")
    try:
        lo, hi = (number(x, field, integer=False) for x in arg[:2])
    except AxisError as e:
        raise AxisError(field, f"{usage}: {e.message}") from None
    n = arg[2]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_AXIS:
        raise AxisError(field, f"{usage} with an integer n in 1..{_MAX_AXIS}, "
                        f"got n = {fmt_value(n)}")
    # the same bits on every machine; an overflow to inf is then reported as non-finite
    return (logspace if form == "logspace" else linspace)(lo, hi, n)
