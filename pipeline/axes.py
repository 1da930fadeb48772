"""Generated axis values, the same bits on every machine (docs/SWEEP_FILES.md, "Axes").

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
from fractions import Fraction

__all__ = ["linspace", "logspace"]

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
