"""Sweep files: load a sweep YAML and validate it into frozen dataclasses (docs/SWEEP_FILES.md).

This is the only module that knows YAML. Everything downstream sees a :class:`SweepSpec` whose
axes are tuples of plain Python values, already checked, with every default filled in.

Validation is complete and happens here, before anything runs. The first problem found is raised
as one :class:`SpecError` naming the file, the dotted field and what is allowed. The run
parameters' keys, types, constraints and defaults come from their table, ``pipeline.parameters``;
this module adds the structure around them and the checks across parameters. Checked:

* structure: YAML syntax (the line and column of an error); the top level is a mapping; only
  known keys and methods at every level (unknown keys are named by their dotted path, with the
  allowed keys listed); no duplicate mapping keys; required fields present (``name``, the
  problem, ``model.depth`` for the diagonal family, ``model.width`` for the twolayer family,
  ``init.alpha``, at least one method with its ``eta``, ``train.max_iters``); ``description`` a
  string;
* axes (every parameter of ``pipeline.parameters`` but ``train.checkpoints``: ``problem.M/N/
  sparsity/sign/outputs``, ``model.family/depth/width``, ``init.scheme/alpha/imbalance``,
  ``methods.*.eta``, ``methods.wn.eta_ratio/schedule``, ``train.max_iters/tol``): a scalar, a
  list, ``{values: [...]}``, ``{logspace: [lo_exp, hi_exp, n]}`` or ``{linspace: [lo, hi, n]}``
  (exactly one key, n an integer in 1..100,000; numbers only); never empty, no values equal to
  12 significant digits, no booleans or strings where numbers are expected, only finite numbers,
  integers where integers are required (an integral float such as ``2.0`` or ``1e5`` is
  accepted), only the allowed words for ``sign``/``family``/``scheme``/``schedule``;
* ranges: the table's bounds (alpha > 0, L >= 2, M, N, s, outputs, width >= 1, eta > 0,
  eta_ratio > 0, max_iters >= 1, tol >= 0, checkpoints >= 2 and a single integer); M < N for
  every combination of axis values, and s <= M (s <= N when the twolayer family is the only
  one); seed >= 0, trials >= 1, name matching ``[a-z0-9._-]+`` and not only dots, a solver
  cvxpy has installed, ``save_solutions`` a boolean;
* model families (``model.family``: diagonal | twolayer, docs/MODEL.md): a parameter of one
  family only (``model.depth``, ``problem.sign``, ``methods.wn``: diagonal; ``model.width``,
  ``problem.outputs``, ``init.imbalance``: twolayer) is refused when none of the sweep's families
  takes it, and required (when it has no default) when one does; ``init.scheme`` takes
  constant | random for diagonal and random | range for twolayer (defaults constant, random), and
  every family of the sweep must get at least one scheme; ``problem.sparsity`` may be omitted
  for the twolayer family (X* dense); an instance file holds a diagonal-family problem;
* a problem file: read by ``problems.read_instance_arrays``, the reader the tasks use, with its
  messages: a readable ``.npz`` (loaded without pickle) with a finite real ``A`` (M x N,
  1 <= M < N), ``b`` of shape (M,) and optionally ``x_star`` of shape (N,); here also x_star >= 0
  if ``sign`` includes ``nonneg``, and the file's SHA-256 (its identity).

The sweep's size (``--max-runs``) is checked by ``pipeline.sweep`` before planning.

YAML is read with a safe loader that also accepts YAML 1.2 floats without a dot (``1e-12``), which
plain PyYAML would otherwise read as a string.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from pipeline import adaptive
from pipeline import axes as axes_module
from pipeline.axes import describe, fmt_value
from pipeline import families as family_registry
from pipeline.families.diagonal import problems  # the instance-file reader (problem.file)
from pipeline.parameters import (
    BY_NAME,
    INSTANCE_PARAMS,
    METHOD_FAMILIES,
    METHOD_KEYS,
    METHODS,
    PARAMS,
    REQUIRED,
    RUN_PARAMS,
    SHARED_RUN_PARAMS,
    Param,
    identity_value,
    is_default,
)

__all__ = ["SpecError", "ProblemSpec", "MethodSpec", "SweepSpec", "load_spec", "parse_spec"]

_NAME_RE = re.compile(r"[a-z0-9._-]+")
_TOP_KEYS = ("name", "description", "seed", "trials", "problem", "model", "init", "methods",
             "train", "reference", "output", "adaptive")
_ADAPTIVE_KEYS = ("success", "level", "along", "across", "trials", "confidence", "refine")
#: The result columns every family's runs have that a success criterion may use.
_COMMON_NUMERIC = ("loss_final", "iterations", "error_truth")


class SpecError(ValueError):
    """One clear message naming the file, the field and what is allowed.

    ``field`` is a dotted path (``init.alpha``, ``methods.wn.eta_ratio``), or ``<file>`` when the
    file cannot be read and ``<yaml>`` when it is not YAML or not a mapping.
    """

    def __init__(self, file: str, field: str, message: str):
        self.file, self.field, self.message = str(file), str(field), str(message)
        super().__init__(f"{self.file}: {self.field}: {self.message}")

    def __reduce__(self):  # keep it picklable (Ray ships exceptions between processes)
        return (type(self), (self.file, self.field, self.message))


@dataclass(frozen=True)
class ProblemSpec:
    """Where the instances come from: generated (its axes are in ``SweepSpec.axes``) or one user
    instance file, identified by its content hash."""

    file: str | None = None
    file_sha256: str | None = None
    file_shape: tuple[int, int] | None = None
    file_has_x_star: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """One method and its own axes (``pipeline.parameters.METHOD_KEYS``), by parameter name."""

    name: str
    axes: dict[str, tuple]


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep. ``canonical_json``/``spec_hash`` identify its content, not its layout.

    ``axes`` maps the name of every parameter of ``pipeline.parameters.PARAMS`` that is not a
    method's own (and, for a user instance file, not a generated problem's) to its values: a
    tuple of plain Python values, defaults filled in; a single-valued setting such as
    ``checkpoints`` is a tuple of one; ``(None,)`` for a parameter no family of the sweep
    takes. ``by_family[family][name]``: the values of every parameter in ``axes`` as the
    instances of that family get them (``pipeline.plan``): ``(None,)`` where the parameter does
    not apply to the family, the family's own default where the file omits the key, and only the
    words the family takes (``init.scheme``)."""

    name: str
    description: str
    seed: int
    trials: int
    problem: ProblemSpec
    axes: dict[str, tuple]
    methods: tuple[MethodSpec, ...]
    reference_solver: str
    save_solutions: bool
    source: str
    text: str
    canonical_json: str
    spec_hash: str
    by_family: dict[str, dict[str, tuple]] = field(default_factory=dict)
    adaptive: adaptive.AdaptiveSpec | None = None  # the adaptive: section (pipeline.rounds)

    @property
    def families(self) -> tuple[str, ...]:
        return self.axes.get("family", (family_registry.DEFAULT_FAMILY,))

    def family_axes(self, family: str) -> dict[str, tuple]:
        """``by_family[family]``, or ``axes`` for a spec built without it."""
        return self.by_family.get(family, self.axes)

    def to_dict(self) -> dict:
        """The normalized spec (defaults filled in, axes as lists), as hashed."""
        return json.loads(self.canonical_json)

    def values(self) -> dict[str, tuple]:
        """Every parameter's values in the sweep (``_swept_values``)."""
        return _swept_values(self.axes, self.methods)

    def same_runs(self, canonical: dict) -> bool:
        """Whether ``canonical`` (another spec's ``to_dict()``, as a results folder's manifest
        stores it) names the same runs with the same settings, compared at the precision of run
        ids (floats to 12 significant digits). True for a spec hashed by an earlier version from
        axis values that differed in their last bits (numpy's logspace on AVX-512 machines,
        before ``pipeline.axes``), so that its folder is recognised as this sweep's."""
        return _at_identity_precision(canonical) == _at_identity_precision(self.to_dict())


def _swept_values(axes: dict[str, tuple], methods: tuple[MethodSpec, ...]) -> dict[str, tuple]:
    """Every parameter's values in a sweep: its shared axis, or the union of the methods' own
    axes, in first-seen order (``None`` included where a family does not take it)."""
    out: dict[str, dict] = {}
    for name, vals in axes.items():
        out.setdefault(name, {}).update(dict.fromkeys(vals))
    for method in methods:
        for name, vals in method.axes.items():
            out.setdefault(name, {}).update(dict.fromkeys(vals))
    return {name: tuple(vals) for name, vals in out.items()}


def _at_identity_precision(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _at_identity_precision(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_at_identity_precision(v) for v in value]
    return identity_value(value) if isinstance(value, float) else value


# ---------------------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """Safe loader that also resolves YAML 1.2 floats such as ``1e-12`` (no dot) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_duplicate_keys(node: yaml.Node, path: str, source: str, seen: set[int]) -> None:
    """Raise SpecError naming the first repeated mapping key (PyYAML would keep the last)."""
    if id(node) in seen:  # aliases may share (or recurse into) nodes
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            child = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in first_line:
                    lines = f"line {first_line[key]} and line {key_node.start_mark.line + 1}"
                    raise SpecError(source, child, f"duplicate key ({lines}); give each key once")
                first_line[key] = key_node.start_mark.line + 1
            _check_duplicate_keys(value_node, child, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, f"{path}[{i}]", source, seen)


def _load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document safely; syntax errors become SpecError(field '<yaml>')."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, "", source, set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(str(x) for x in (e.context, e.problem) if x)
        raise SpecError(source, "<yaml>", f"invalid YAML{where}: {what}") from None
    except yaml.YAMLError as e:
        raise SpecError(source, "<yaml>", f"invalid YAML: {e}") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------- values

class _Validator:
    """The checks; holds the source name (for messages) and the folder problem files resolve in."""

    def __init__(self, source: str, base_dir: str):
        self.source, self.base_dir = source, base_dir
        self.given: set[str] = set()  # names of the shared parameters the file gives
        self.families: tuple[str, ...] = (family_registry.DEFAULT_FAMILY,)

    def fail(self, field: str, message: str) -> SpecError:
        return SpecError(self.source, field, message)

    # -- structure
    def section(self, doc: dict, path: str, allowed: tuple[str, ...], hint: str = "") -> dict:
        """The mapping at ``path`` ({} if absent or null), with unknown keys rejected."""
        raw = doc.get(path.rsplit(".", 1)[-1])
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(path, f"must be a mapping with keys {', '.join(allowed)}; "
                            f"got {describe(raw)}")
        self.known_keys(raw, allowed, path, hint)
        return raw

    def known_keys(self, mapping: dict, allowed: tuple[str, ...], path: str,
                   hint: str = "") -> None:
        for k in mapping:
            if k not in allowed:
                field = f"{path}.{k}" if path else str(k)
                raise self.fail(field, f"unknown key; allowed: {hint or ', '.join(allowed)}")

    def required(self, mapping: dict, path: str, what: str) -> Any:
        key = path.rsplit(".", 1)[-1]
        if key not in mapping:
            raise self.fail(path, f"required: {what}")
        return mapping[key]

    # -- values and axes: the grammar is pipeline.axes'; its errors name this file
    def scalar_int(self, v: Any, field: str, minimum: int) -> int:
        try:
            return axes_module.scalar_int(v, field, minimum)
        except axes_module.AxisError as e:
            raise self.fail(e.field, e.message) from None

    def axis(self, raw: Any, field: str, kind: str, choices: tuple[str, ...] = (),
             gt: float | None = None, ge: float | None = None) -> tuple:
        try:
            return axes_module.parse_axis(raw, field, kind, choices, gt=gt, ge=ge)
        except axes_module.AxisError as e:
            raise self.fail(e.field, e.message) from None

    # -- parameters
    def param(self, p: Param, mapping: dict, method: str | None = None) -> tuple:
        """The values of one parameter (``pipeline.parameters``) from its section's mapping, for
        the sweep's families (``self.families``): ``(None,)`` when no family takes it."""
        field = p.field(method)
        families = [f for f in self.families if p.applies_to_family(f)]
        if not families:
            if p.key in mapping:
                raise self.fail(field, f"{p.doc} is a parameter of the "
                                f"{' and '.join(p.families or ())} family only; this sweep's "
                                f"model.family is {', '.join(self.families)}")
            return (None,)
        if p.key not in mapping:
            defaults = [p.default_for(f) for f in families]
            missing = [f for f, d in zip(families, defaults) if d is REQUIRED]
            if missing:
                takes_file = all(family_registry.family(f).takes_file for f in missing)
                extra = "; or give problem.file" if p.generated and takes_file else ""
                which = "" if (p.families is None and not p.by_family) else \
                    f" for the {', '.join(missing)} family"
                hint = f"; {p.hint}" if p.hint else ""
                raise self.fail(field, f"required{which}: {p.doc} ({p.rule()}){extra}{hint}")
            return tuple(dict.fromkeys(defaults))
        self.given.add(p.name)
        if not p.axis:
            if p.kind != "int":
                raise AssertionError(f"single-valued parameters are integers: {p.name}")
            return (self.scalar_int(mapping[p.key], field, int(p.ge if p.ge is not None else 0)),)
        values = self.axis(mapping[p.key], field, p.kind, p.choices, gt=p.gt, ge=p.ge)
        if p.by_family and p.choices:
            for v in values:
                if not any(v in p.choices_for(f) for f in families):
                    takes = "; ".join(f"{f}: {', '.join(p.choices_for(f))}" for f in families)
                    raise self.fail(field, f"{fmt_value(v)} is not for this sweep's model.family "
                                    f"({', '.join(families)}); allowed: {takes}")
            for f in families:
                if not any(v in p.choices_for(f) for v in values):
                    raise self.fail(field, f"the {f} family takes "
                                    f"{', '.join(p.choices_for(f))}; got {', '.join(values)}")
        return values

    def family_values(self, p: Param, values: tuple, family: str) -> tuple:
        """The values of parameter ``p`` as the instances of ``family`` get them."""
        if not p.applies_to_family(family):
            return (None,)
        if p.name not in self.given and p.by_family:
            return (p.default_for(family),)
        if p.by_family and p.choices:
            return tuple(v for v in values if v in p.choices_for(family))
        return values

    def read_families(self, doc: dict) -> tuple[str, ...]:
        """``model.family`` (read first: it decides which other keys apply). A malformed model
        section is left to its own check, in the documented order."""
        model = doc.get("model")
        if isinstance(model, dict) and "family" in model:
            self.families = self.param(BY_NAME["family"], model)
        return self.families

    # -- problem
    def problem(self, doc: dict) -> tuple[ProblemSpec, dict[str, tuple]]:
        """The problem section: where instances come from, and the instance parameters' axes."""
        if doc.get("problem") is None:
            raise self.fail("problem", "required: {M, N, sparsity, sign} (generated) "
                            "or {file, sign}")
        params = [p for p in INSTANCE_PARAMS if p.section == "problem"]
        generated = [p for p in params if p.generated]
        prob = self.section(doc, "problem", (*(p.key for p in params), "file"),
                            hint=f"{', '.join(p.key for p in params)} (generated) or "
                            f"file, {', '.join(p.key for p in params if not p.generated)}"
                            " (user instance)")
        no_file = [f for f in self.families if not family_registry.family(f).takes_file]
        if "file" in prob and no_file:
            takes = [f for f in family_registry.FAMILIES if family_registry.family(f).takes_file]
            keys = ", ".join(p.key for p in generated
                             if any(p.applies_to_family(f) for f in no_file))
            raise self.fail("problem.file", f"an instance file holds a problem of the "
                            f"{' or '.join(takes)} family; the {', '.join(no_file)} family takes "
                            f"a generated problem ({keys})")
        if "file" in prob:
            mixed = [p.key for p in generated if p.key in prob]
            if mixed:
                raise self.fail("problem", "either a generated problem (M, N, sparsity, sign) or a "
                                f"file (file, sign), not both; got file and {', '.join(mixed)}")
            axes = {p.name: self.param(p, prob) for p in params if not p.generated}
            path, sha, shape, has_x = self.problem_file(prob["file"], axes["sign"])
            return ProblemSpec(file=path, file_sha256=sha, file_shape=shape,
                               file_has_x_star=has_x), axes
        axes = {p.name: self.param(p, prob) for p in params}
        M, N = axes["M"], axes["N"]
        if max(M) >= min(N):
            raise self.fail("problem.M", f"M must be < N for every combination, got M = {max(M)}, "
                            f"N = {min(N)}")
        for f in self.families:  # each family's rules, on the values its instances get
            own = {name: self.family_values(BY_NAME[name], values, f)
                   for name, values in axes.items()}
            violated = family_registry.family(f).check(own)
            if violated:
                raise self.fail(*violated)
        return ProblemSpec(), axes

    def problem_file(self, raw: Any,
                     signs: tuple[str, ...]) -> tuple[str, str, tuple[int, int], bool]:
        """Resolve, hash and check the .npz (``problems.read_instance_arrays``, and x_star >= 0
        for nonneg); returns (absolute path, sha256, (M, N), has x_star)."""
        field = "problem.file"
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(field, f"expected a path to an .npz file, got {describe(raw)}")
        path = os.path.abspath(os.path.join(self.base_dir, os.path.expanduser(raw)))
        try:  # the tasks read the file with the same reader, so the messages are the same
            data = problems.read_instance_bytes(path)
            A, b, x_star = problems.read_instance_arrays(data, name=path)
        except problems.InstanceError as e:
            raise self.fail(field, str(e)) from None
        if x_star is not None and "nonneg" in signs and np.any(x_star < 0):
            raise self.fail(field, f"{path}: x_star has negative entries (min "
                            f"{float(x_star.min())}) but sign includes nonneg; use sign: signed")
        M, N = A.shape
        return path, hashlib.sha256(data).hexdigest(), (int(M), int(N)), x_star is not None

    # -- sections of shared run axes, and methods
    def shared_axes(self, doc: dict, section: str) -> dict[str, tuple]:
        """The axes of one section of run parameters shared by every method (the section may
        also hold instance parameters read elsewhere: ``model.family``)."""
        params = [p for p in SHARED_RUN_PARAMS if p.section == section]
        others = tuple(p.key for p in INSTANCE_PARAMS if p.section == section)
        mapping = self.section(doc, section, (*(p.key for p in params), *others))
        return {p.name: self.param(p, mapping) for p in params}

    def methods(self, doc: dict) -> tuple[MethodSpec, ...]:
        """The methods in file order, each with its own axes (defaults filled in)."""
        raw = doc.get("methods")
        if not isinstance(raw, dict) or not raw:
            raise self.fail("methods", f"required: a mapping with at least one of "
                            f"{', '.join(METHODS)}; got {describe(raw)}")
        out = []
        for name in raw:
            if name not in METHOD_KEYS:
                raise self.fail(f"methods.{name}", f"unknown method; allowed: {', '.join(METHODS)}")
            if not set(METHOD_FAMILIES[name]) & set(self.families):
                takes = [m for m in METHODS if set(METHOD_FAMILIES[m]) & set(self.families)]
                display = family_registry.METHOD_NAMES[name]
                raise self.fail(f"methods.{name}", f"{display} is defined for the "
                                f"{' and '.join(METHOD_FAMILIES[name])} family only; the "
                                f"{', '.join(self.families)} family takes {', '.join(takes)}")
            mapping = self.section(raw, f"methods.{name}", METHOD_KEYS[name])
            own = [p for p in RUN_PARAMS if p.methods is not None and p.applies_to(name)]
            out.append(MethodSpec(name, {p.name: self.param(p, mapping, name) for p in own}))
        return tuple(out)


    def method_rules(self, problem: ProblemSpec, axes: dict[str, tuple],
                     methods: tuple[MethodSpec, ...]) -> None:
        """Each family's rules (``Family.check``) once more per method, on the instance axes
        with that method's own axes and name (a batch at most M). An instance file gives M."""
        shape = {"M": (problem.file_shape[0],)} if problem.file is not None else {}
        for f in self.families:
            for m in methods:
                if f not in METHOD_FAMILIES[m.name]:
                    continue
                own = {name: self.family_values(BY_NAME[name], values, f)
                       for name, values in axes.items()}
                own.update(shape, **m.axes, method=(m.name,))
                violated = family_registry.family(f).check(own)
                if violated:
                    raise self.fail(*violated)


# ---------------------------------------------------------------------------------------- parse

def parse_spec(text: str, source: str = "<string>", base_dir: str | None = None) -> SweepSpec:
    """Validate sweep YAML ``text`` into a SweepSpec (the module docstring lists what is checked).

    ``source`` names the file in error messages; a relative ``problem.file`` resolves against
    ``base_dir`` (default: the current directory). Raises SpecError on the first problem found,
    checking sections in the order name, description, seed, trials, problem, model, init,
    methods, train, reference, output.
    """
    source = str(source)
    v = _Validator(source, os.path.abspath(base_dir if base_dir is not None else os.getcwd()))
    doc = _load_yaml(text, source)
    if not isinstance(doc, dict):
        got = describe(doc) if doc is not None else "an empty document"
        raise v.fail("<yaml>", f"the top level must be a mapping with keys {', '.join(_TOP_KEYS)}; "
                     f"got {got}")
    v.known_keys(doc, _TOP_KEYS, "")

    name = v.required(doc, "name", "the sweep's name, matching [a-z0-9._-]+")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or set(name) == {"."}:
        raise v.fail("name", "must match [a-z0-9._-]+ (lowercase letters, digits, '.', '_', '-'); "
                     f"got {describe(name)}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise v.fail("description", f"expected a string, got {describe(description)}")
    seed = v.scalar_int(doc.get("seed", 0), "seed", 0)
    trials = v.scalar_int(doc.get("trials", 1), "trials", 1)
    families = v.read_families(doc)
    problem, axes = v.problem(doc)
    axes["family"] = families
    for section in ("model", "init"):
        axes.update(v.shared_axes(doc, section))
    methods = v.methods(doc)
    v.method_rules(problem, axes, methods)
    axes.update(v.shared_axes(doc, "train"))

    solver = v.section(doc, "reference", ("solver",)).get("solver", "HIGHS")
    import cvxpy  # deferred: slow to import, and only this check needs it

    installed = sorted(cvxpy.installed_solvers())
    if not isinstance(solver, str) or solver.upper() not in installed:
        raise v.fail("reference.solver", f"unknown solver {fmt_value(solver)}; installed: "
                     f"{', '.join(installed)}")
    solver = solver.upper()  # cvxpy's own spelling, so "highs" and "HIGHS" hash the same
    save = v.section(doc, "output", ("save_solutions",)).get("save_solutions", False)
    if not isinstance(save, bool):
        raise v.fail("output.save_solutions", f"expected true or false, got {describe(save)}")
    adaptive_spec = _adaptive(v, doc, axes, methods, families)
    if adaptive_spec is not None:
        if "trials" in doc:
            raise v.fail("trials", "an adaptive sweep gives its trials as adaptive.trials: "
                         "{start, max}; remove the top-level trials")
        trials = adaptive_spec.trials_max

    by_family = {f: {**{name: v.family_values(BY_NAME[name], values, f)
                        for name, values in axes.items()}, "family": (f,)} for f in families}
    # with several families, an omitted key with per-family defaults is not the list of those
    # defaults (each family gets its own): it stays out of the canonical spec
    per_family = {name for name in axes if BY_NAME[name].by_family and name not in v.given} \
        if len(families) > 1 else set()
    canonical = {
        "name": name, "description": description, "seed": seed, "trials": trials,
        **_canonical_axes(problem, axes, methods, omit=per_family),
        "reference": {"solver": solver},
        "output": {"save_solutions": save},
        # absent unless given: the hash of every other sweep is unchanged
        **({"adaptive": dataclasses.asdict(adaptive_spec)} if adaptive_spec else {}),
    }
    canonical_json = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return SweepSpec(
        name=name, description=description, seed=seed, trials=trials, problem=problem,
        axes=axes, methods=methods, reference_solver=solver, save_solutions=save, source=source,
        text=text, canonical_json=canonical_json,
        spec_hash=hashlib.sha256(canonical_json.encode()).hexdigest(),
        by_family=by_family, adaptive=adaptive_spec,
    )


def _adaptive(v: _Validator, doc: dict, axes: dict[str, tuple], methods: tuple[MethodSpec, ...],
              families: tuple[str, ...]) -> adaptive.AdaptiveSpec | None:
    """The ``adaptive:`` section (docs/SWEEP_FILES.md, "Adaptive sweeps"), or None."""
    if "adaptive" not in doc:
        return None
    raw = v.section(doc, "adaptive", _ADAPTIVE_KEYS)
    success = raw.get("success")
    if not isinstance(success, dict):
        raise v.fail("adaptive.success", "required: {column: <result column>, at_most: <number>} "
                     f"(or at_least); got {describe(success)}")
    v.known_keys(success, ("column", "at_most", "at_least"), "adaptive.success")
    trials = raw.get("trials", {"start": 8, "max": 64})
    if not isinstance(trials, dict):
        raise v.fail("adaptive.trials", f"expected {{start, max}}, got {describe(trials)}")
    v.known_keys(trials, ("start", "max"), "adaptive.trials")

    def number(value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise v.fail(field, f"expected a number, got {describe(value)}")
        return float(value)

    def integer(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise v.fail(field, f"expected an integer, got {describe(value)}")
        return value

    def word(value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise v.fail(field, f"expected a parameter name, got {describe(value)}")
        return value

    section = adaptive.AdaptiveSpec(
        success_column=word(success.get("column"), "adaptive.success.column"),
        at_most=None if "at_most" not in success else number(success["at_most"],
                                                             "adaptive.success.at_most"),
        at_least=None if "at_least" not in success else number(success["at_least"],
                                                               "adaptive.success.at_least"),
        level=number(raw.get("level", 0.5), "adaptive.level"),
        along=word(v.required(raw, "adaptive.along", "the axis along which the crossing is "
                              "located (alpha, ...)"), "adaptive.along"),
        across=None if raw.get("across") is None else word(raw["across"], "adaptive.across"),
        trials_start=integer(trials.get("start", 8), "adaptive.trials.start"),
        trials_max=integer(trials.get("max", 64), "adaptive.trials.max"),
        confidence=number(raw.get("confidence", 0.95), "adaptive.confidence"),
        refine=integer(raw.get("refine", 3), "adaptive.refine"))
    values = {name: tuple(x for x in vals if x is not None)
              for name, vals in _swept_values(axes, methods).items()}
    swept = {name: vals for name, vals in values.items() if len(vals) > 1}
    for name in (section.along, section.across):
        if name is not None and name in values and len(values[name]) == 1:
            swept[name] = tuple(values[name])  # adaptive.validate names it: one value
    numeric = {*_COMMON_NUMERIC, *(c for f in families
                                   for c, kind in family_registry.family(f).run_columns
                                   if kind in ("int", "float"))}
    problems_found = adaptive.validate(section, sorted(numeric), swept)
    if problems_found:
        raise v.fail(*problems_found[0])
    for name in (section.along, section.across):
        if name is not None and BY_NAME[name].kind == "str":
            raise v.fail("adaptive.along" if name == section.along else "adaptive.across",
                         f"{name} takes words; the contour needs a numeric axis")
    return section


def _canonical_axes(problem: ProblemSpec, axes: dict[str, tuple],
                    methods: tuple[MethodSpec, ...], omit: set[str] = frozenset()) -> dict:
    """The parameters' part of the canonical spec: ``{section: {key: [values]}}`` (a single
    value for single-valued settings). A parameter added after wnsweep 0.1 appears only when
    it differs from its default, so that the hash of an older sweep file does not change. A
    parameter no family of the sweep takes does not appear, nor do the parameters in ``omit``."""
    out: dict[str, dict] = {"problem": {}, "model": {}, "init": {}, "methods": {}, "train": {}}
    if problem.file is not None:
        out["problem"]["sha256"] = problem.file_sha256

    def put(target: dict, p: Param, values: tuple) -> None:
        if all(x is None for x in values):  # a parameter no family of the sweep takes
            return
        if p.identity == "unless_default" and all(is_default(p, x) for x in values):
            return
        target[p.key] = list(values) if p.axis else values[0]

    for p in PARAMS:
        if p.name in axes and p.name not in omit:
            put(out[p.section], p, axes[p.name])
    for m in methods:
        target = out["methods"].setdefault(m.name, {})
        for p in PARAMS:
            if p.name in m.axes:
                put(target, p, m.axes[p.name])
    return out


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read a sweep file (UTF-8) and validate it; a relative problem file resolves in its folder."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise SpecError(source, "<file>", "no such file") from None
    except UnicodeDecodeError as e:
        raise SpecError(source, "<file>",
                        f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SpecError(source, "<file>", f"cannot read: {e.strerror or e}") from None
    return parse_spec(text, source=source, base_dir=os.path.dirname(os.path.abspath(source)))
