"""Tests of pipeline.spec: sweep YAML -> validated, frozen SweepSpec.

Bad sweeps live in tests/data/bad_sweeps/<case>.yaml; each file's first line is
``# field: <dotted.field>``, the field its SpecError must name (the CLI tests reuse the folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.families.diagonal import problems
from pipeline.plan import make_plan
from pipeline.spec import MethodSpec, SpecError, SweepSpec, load_spec, parse_spec

DATA = Path(__file__).parent / "data"
BAD = sorted((DATA / "bad_sweeps").glob("*.yaml"))
EXAMPLE = DATA / "sweeps" / "example.yaml"

MINIMAL = """\
name: tiny
problem: {M: 4, N: 8, sparsity: 2}
model: {depth: 2}
init: {alpha: 0.1}
methods: {gd: {eta: 0.1}, wn: {eta: 0.1, schedule: constant}}
train: {max_iters: 10}
"""


def expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# field: "), f"{path.name}: line 1 must be '# field: <dotted.field>'"
    return first[len("# field: "):].strip()


# ------------------------------------------------------------------------------------ bad sweeps

def test_bad_sweeps_folder_is_rich_enough():
    assert len(BAD) >= 12
    fields = {expected_field(p) for p in BAD}
    for f in ("init.alpha", "model.depth", "problem.sparsity", "problem.M", "problem.file",
              "reference.solver", "name", "<yaml>"):
        assert f in fields


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_sweep_is_rejected_naming_the_field(path: Path):
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    err = info.value
    assert err.field == expected_field(path), str(err)
    assert err.file == str(path)
    assert str(path) in str(err) and err.field in str(err)
    assert isinstance(err, ValueError)


def test_spec_error_format_and_pickle():
    err = SpecError("sweeps/x.yaml", "init.alpha", "values must be > 0, got -1.0")
    assert str(err) == "sweeps/x.yaml: init.alpha: values must be > 0, got -1.0"
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.field, back.message) == (err.file, err.field, err.message)
    assert str(back) == str(err)


def test_error_messages_are_specific():
    with pytest.raises(SpecError, match=r"init\.alpha: values must be > 0, got -1\.0"):
        parse_spec(MINIMAL.replace("alpha: 0.1", "alpha: [0.1, -1]"))
    with pytest.raises(SpecError, match=r"M = 8, N = 8"):
        parse_spec(MINIMAL.replace("M: 4", "M: [4, 8]"))
    with pytest.raises(SpecError, match=r"allowed: scheme, alpha"):
        parse_spec(MINIMAL.replace("alpha: 0.1", "alpha: 0.1, alpah: 1"))
    with pytest.raises(SpecError, match=r"line 2"):
        parse_spec(MINIMAL.replace("problem: {M: 4,", "problem: {M: 4,,"))


def test_missing_and_non_mapping_files(tmp_path: Path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.field == "<file>" and "nope.yaml" in str(info.value)
    for text in ("", "just a string\n", "- 1\n- 2\n"):
        with pytest.raises(SpecError) as info:
            parse_spec(text, source="s.yaml")
        assert info.value.field == "<yaml>" and info.value.file == "s.yaml"


@pytest.mark.parametrize(
    "old, new, field",
    [
        ("depth: 2", "depth: {linspace: [2, 3, 3]}", "model.depth"),  # 2.5 is not an integer
        ("alpha: 0.1", "alpha: {values: 0.1}", "init.alpha"),  # values needs a list
        ("alpha: 0.1", "alpha: {logspace: [0, 400, 2]}", "init.alpha"),  # overflows to inf
        ("alpha: 0.1", "alpha: .nan", "init.alpha"),
        ("alpha: 0.1", "alpha: 1" + "0" * 400, "init.alpha"),  # an int beyond the float range
        ("alpha: 0.1", "alpha: [[0.1]]", "init.alpha"),
        ("alpha: 0.1", "alpha: ", "init.alpha"),
        ("alpha: 0.1", "alpha: {}", "init.alpha"),
        ("sparsity: 2", "sparsity: 0", "problem.sparsity"),
        ("N: 8", "N: 0", "problem.N"),
        ("sparsity: 2}", "sparsity: 2, sign: {linspace: [0, 1, 2]}}", "problem.sign"),
        ("sparsity: 2}", "sparsity: 2, sign: [nonneg, nonneg]}", "problem.sign"),
        ("name: tiny", "name: ..", "name"),
        ("name: tiny", "name: 12", "name"),
        ("max_iters: 10", "max_iters: 0", "train.max_iters"),
        ("max_iters: 10", "max_iters: 10, tol: 1e-12, checkpoints: 2.5", "train.checkpoints"),
        ("{gd: {eta: 0.1}, wn: {eta: 0.1, schedule: constant}}", "[gd, wn]", "methods"),
        ("{gd: {eta: 0.1}, wn: {eta: 0.1, schedule: constant}}", "{gd: {eta: -0.1}}", "methods.gd.eta"),
        ("model: {depth: 2}", "model: 2", "model"),
        ("train: {max_iters: 10}", "train: {max_iters: 10}\ndescription: [a]", "description"),
        ("train: {max_iters: 10}", "train: {max_iters: 10}\nseed: 1.5", "seed"),
        ("train: {max_iters: 10}", "train: {max_iters: 10}\nreference: {solver: 3}",
         "reference.solver"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(old: str, new: str, field: str):
    text = MINIMAL.replace(old, new)
    assert text != MINIMAL
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert info.value.field == field, str(info.value)


def test_problem_required():
    text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith("problem"))
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert info.value.field == "problem"


# ------------------------------------------------------------------------------------ good sweeps

def test_example_from_sweeps_md():
    spec = load_spec(EXAMPLE)
    assert isinstance(spec, SweepSpec)
    assert (spec.name, spec.seed, spec.trials) == ("fig1-alpha", 0, 10)
    assert spec.description.startswith("Error vs initialization scale")
    p, ax = spec.problem, spec.axes
    assert (ax["M"], ax["N"], ax["s"], ax["sign"]) == ((40,), (100,), (3, 5, 8), ("nonneg",))
    assert (p.file, p.file_sha256, p.file_shape, p.file_has_x_star) == (None, None, None, False)
    assert ax["L"] == (2, 3)
    assert ax["init"] == ("constant",)
    assert len(ax["alpha"]) == 13 and all(type(a) is float for a in ax["alpha"])
    assert ax["alpha"][0] == pytest.approx(1e-3) and ax["alpha"][-1] == pytest.approx(1.0)
    assert ax["alpha"][4] == pytest.approx(1e-2) and ax["alpha"][8] == pytest.approx(1e-1)
    assert spec.methods == (
        MethodSpec("gd", {"eta": (0.01,), **FULL_BATCH}),
        MethodSpec("wn", {"eta": (0.01,), "eta_ratio": (0.01, 0.1, 1.0, 10.0),
                          "schedule": ("constant",), **FULL_BATCH}),
    )
    assert all(type(x) is float for x in spec.methods[1].axes["eta_ratio"])
    assert (ax["max_iters"], ax["tol"], ax["checkpoints"]) == ((1000,), (1e-12,), (64,))
    assert spec.reference_solver == "HIGHS" and spec.save_solutions is False
    assert spec.source == str(EXAMPLE) and spec.text == EXAMPLE.read_text()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


#: A method's own axes when the file leaves them out: full batch, no label noise.
FULL_BATCH = {"batch": (None,), "label_noise": (0.0,)}


def test_defaults_are_filled_in():
    spec = parse_spec(MINIMAL)
    assert spec.source == "<string>" and spec.text == MINIMAL
    assert (spec.description, spec.seed, spec.trials) == ("", 0, 1)
    assert spec.axes["sign"] == ("nonneg",) and spec.axes["init"] == ("constant",)
    assert spec.methods == (MethodSpec("gd", {"eta": (0.1,), **FULL_BATCH}),
                            MethodSpec("wn", {"eta": (0.1,), "eta_ratio": (1.0,),
                                              "schedule": ("constant",), **FULL_BATCH}))
    assert (spec.axes["tol"], spec.axes["checkpoints"]) == ((1e-12,), (64,))
    assert spec.reference_solver == "HIGHS" and spec.save_solutions is False
    assert spec.to_dict() == {
        "name": "tiny", "description": "", "seed": 0, "trials": 1,
        "problem": {"M": [4], "N": [8], "sparsity": [2], "sign": ["nonneg"]},
        "model": {"depth": [2]},
        "init": {"scheme": ["constant"], "alpha": [0.1]},
        "methods": {"gd": {"eta": [0.1]},
                    "wn": {"eta": [0.1], "eta_ratio": [1.0], "schedule": ["constant"]}},
        "train": {"max_iters": [10], "tol": [1e-12], "checkpoints": 64},
        "reference": {"solver": "HIGHS"},
        "output": {"save_solutions": False},
    }
    assert "source" not in spec.canonical_json and "text" not in spec.to_dict()


def test_methods_keep_file_order():
    spec = parse_spec(MINIMAL.replace("{gd: {eta: 0.1}, wn: {eta: 0.1, schedule: constant}}",
                                      "{wn: {eta: 0.1, schedule: constant}, gd: {eta: 0.1}}"))
    assert [m.name for m in spec.methods] == ["wn", "gd"]
    assert spec.spec_hash == parse_spec(MINIMAL).spec_hash  # same sweep, same hash


def test_values_linspace_logspace_and_list_axes_expand_to_values_of_the_keys_type():
    spec = parse_spec(MINIMAL.replace("depth: 2", "depth: {values: [2, 3.0, 4]}")
                      .replace("alpha: 0.1", "alpha: {linspace: [0.25, 1, 4]}")
                      .replace("max_iters: 10", "max_iters: {logspace: [2, 4, 3]}, tol: [0, 1e-10]")
                      .replace("M: 4", "M: [3, 4]")
                      .replace("sparsity: 2}", "sparsity: 2, sign: [signed, nonneg]}")
                      .replace("wn: {eta: 0.1, schedule: constant}",
                               "wn: {eta: 1, eta_ratio: 1e-2, schedule: [normalized, constant]}"))
    ax = spec.axes
    assert ax["L"] == (2, 3, 4) and all(type(x) is int for x in ax["L"])
    assert ax["alpha"] == (0.25, 0.5, 0.75, 1.0)
    assert ax["max_iters"] == (100, 1000, 10000)
    assert all(type(x) is int for x in ax["max_iters"])
    assert ax["tol"] == (0.0, 1e-10)
    assert ax["M"] == (3, 4) and ax["sign"] == ("signed", "nonneg")
    assert spec.methods[1] == MethodSpec("wn", {"eta": (1.0,), "eta_ratio": (0.01,),
                                                "schedule": ("normalized", "constant"),
                                                **FULL_BATCH})
    assert type(spec.methods[1].axes["eta"][0]) is float


def test_scalar_list_and_values_forms_are_one_axis():
    hashes = {parse_spec(MINIMAL.replace("alpha: 0.1", form)).spec_hash
              for form in ("alpha: 0.1", "alpha: [0.1]", "alpha: {values: [0.1]}", "alpha: 1.0e-1",
                           "alpha: 1e-1", "alpha: {logspace: [-1, -1, 1]}")}
    assert len(hashes) == 1


def test_integral_floats_become_ints_and_solver_case():
    spec = parse_spec(MINIMAL.replace("max_iters: 10", "max_iters: 1e5")
                      + "seed: 7.0\nreference: {solver: highs}\n")
    assert spec.axes["max_iters"] == (100000,) and type(spec.axes["max_iters"][0]) is int
    assert spec.seed == 7 and type(spec.seed) is int
    assert spec.reference_solver == "HIGHS"


def test_hash_stable_across_reformatting_and_sensitive_to_values():
    base = load_spec(EXAMPLE)
    reformatted = textwrap.dedent("""\
        # same sweep, different layout
        output:
          save_solutions: no
        reference:
          solver: HIGHS
        train: {checkpoints: 64, tol: 1e-12, max_iters: 1000.0}
        methods:
          wn:
            schedule: [constant]
            eta_ratio: {values: [1.0e-2, 0.1, 1.0, 10]}
            eta: 1.0e-2
          gd:
            eta: [0.01]
        init: {alpha: {logspace: [-3, 0, 13]}, scheme: constant}
        model: {depth: {values: [2, 3]}}
        problem: {sign: nonneg, sparsity: [3, 5, 8], N: 100, M: 40}
        trials: 10
        seed: 0
        description: "Error vs initialization scale, GD vs WN-GD, nonneg, L = 2"
        name: 'fig1-alpha'
        """)
    other = parse_spec(reformatted, source="other.yaml")
    assert other.canonical_json == base.canonical_json and other.spec_hash == base.spec_hash
    assert other.text != base.text and other.source == "other.yaml"

    text = EXAMPLE.read_text()
    for old, new in [("seed: 0 ", "seed: 1 "), ("trials: 10", "trials: 9"),
                     ("[3, 5, 8]", "[3, 5, 7]"),
                     ("[-3, 0, 13]", "[-3, 0, 12]"), ("eta: 0.01}", "eta: 0.02}"),
                     ("max_iters: 1000", "max_iters: 2000"), ("solver: HIGHS", "solver: CLARABEL"),
                     ("save_solutions: false", "save_solutions: true"),
                     ("depth: [2, 3]", "depth: [2]"), ("scheme: constant", "scheme: random")]:
        changed = text.replace(old, new)
        assert changed != text, old
        assert parse_spec(changed).spec_hash != base.spec_hash, (old, new)


# ------------------------------------------------------------------------------------ file problems

def write_instance(path: Path, M: int = 3, N: int = 6, x_star: bool = True) -> bytes:
    rng = np.random.default_rng(1)
    A = rng.standard_normal((M, N))
    x = np.zeros(N)
    x[:2] = 1.0
    arrays = {"A": A, "b": A @ x, **({"x_star": x} if x_star else {}), "notes": np.arange(3)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path.read_bytes()


FILE_SWEEP = MINIMAL.replace("problem: {M: 4, N: 8, sparsity: 2}",
                             "problem: {file: data/inst.npz, sign: [nonneg, signed]}")


def test_file_problem_resolves_relative_to_the_sweep(tmp_path: Path, monkeypatch):
    folder = tmp_path / "study"
    data = write_instance(folder / "data" / "inst.npz")
    (folder / "sweep.yaml").write_text(FILE_SWEEP)
    monkeypatch.chdir(tmp_path)  # the relative path must not depend on the working directory
    spec = load_spec("study/sweep.yaml")
    p = spec.problem
    assert p.file == str((folder / "data" / "inst.npz").resolve())
    assert p.file_sha256 == hashlib.sha256(data).hexdigest()
    assert p.file_shape == (3, 6) and p.file_has_x_star is True
    assert not {"M", "N", "s"} & set(spec.axes) and spec.axes["sign"] == ("nonneg", "signed")
    assert spec.to_dict()["problem"] == {"sha256": p.file_sha256, "sign": ["nonneg", "signed"]}
    assert str(folder) not in spec.canonical_json

    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    spec2 = load_spec(moved / "sweep.yaml")
    assert spec2.problem.file == str((moved / "data" / "inst.npz").resolve())
    assert spec2.spec_hash == spec.spec_hash

    write_instance(moved / "data" / "inst.npz", M=2)  # different content, different hash
    assert load_spec(moved / "sweep.yaml").spec_hash != spec.spec_hash


def test_file_problem_via_parse_spec_base_dir_and_without_x_star(tmp_path: Path):
    write_instance(tmp_path / "data" / "inst.npz", x_star=False)
    spec = parse_spec(FILE_SWEEP, source="mem.yaml", base_dir=str(tmp_path))
    assert spec.problem.file_has_x_star is False and spec.problem.file_shape == (3, 6)


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"A": np.ones((3, 6))}, "needs arrays A"),
        ({"A": np.ones((6, 3)), "b": np.ones(6)}, "M < N"),
        ({"A": np.ones(6), "b": np.ones(1)}, "2-D"),
        ({"A": np.ones((3, 6)), "b": np.ones((3, 1))}, "b (3, 1)"),
        ({"A": np.ones((3, 6)), "b": np.ones(3), "x_star": np.ones(5)}, "x_star (5,)"),
        ({"A": np.full((3, 6), np.nan), "b": np.ones(3)}, "non-finite"),
        ({"A": np.ones((3, 6), dtype=complex), "b": np.ones(3)}, "real numbers"),
    ],
)
def test_bad_instance_files(tmp_path: Path, arrays: dict, needle: str):
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "inst.npz", **arrays)
    with pytest.raises(SpecError) as info:
        parse_spec(FILE_SWEEP, base_dir=str(tmp_path))
    assert info.value.field == "problem.file" and needle in info.value.message, str(info.value)


def _npz(**arrays):
    return lambda path: np.savez(path, **arrays)


def _raw(data: bytes):
    return lambda path: path.write_bytes(data)


def _npy(path: Path):
    with open(path, "wb") as f:  # a plain .npy under an .npz name
        np.save(f, np.ones(3))


#: One bad instance file of each kind: how to write it at the path, and the words its message
#: must hold (besides the path).
BAD_INSTANCE_FILES = {
    "missing": (lambda path: None, "cannot read the file (No such file or directory)"),
    "a directory": (lambda path: path.mkdir(), "cannot read the file (Is a directory)"),
    "empty": (_raw(b""), "not an .npz archive"),
    "text": (_raw(b"not a zip"), "not an .npz archive"),
    "single array": (_npy, "got a single array"),
    "pickled objects": (_npz(A=np.array([{"a": 1}, None], dtype=object), b=np.ones(1)),
                        "cannot read array A (Object arrays cannot be loaded"),
    "no b": (_npz(A=np.ones((3, 6))), "missing array b; needs arrays A (M x N) and b (M), "
             "found A (3, 6)"),
    "no A or b": (_npz(x=np.ones(3)), "missing array A and b; needs arrays A (M x N) and b (M), "
                  "found no A, b or x_star"),
    "complex A": (_npz(A=np.ones((3, 6), dtype=complex), b=np.ones(3)),
                  "array A must be real numbers, got dtype complex128"),
    "string b": (_npz(A=np.ones((3, 6)), b=np.array(["1", "2", "3"])),
                 "array b must be real numbers, got dtype <U1"),
    "NaN in A": (_npz(A=np.full((3, 6), np.nan), b=np.ones(3)),
                 "array A has non-finite entries (18 of 18)"),
    "inf in x_star": (_npz(A=np.ones((3, 6)), b=np.ones(3), x_star=np.r_[np.inf, np.zeros(5)]),
                      "array x_star has non-finite entries (1 of 6)"),
    "A 1-D": (_npz(A=np.ones(6), b=np.ones(1)), "A must be 2-D, M x N with 1 <= M < N; "
              "found A (6,), b (1,)"),
    "M >= N": (_npz(A=np.ones((6, 3)), b=np.ones(6)), "A must be 2-D, M x N with 1 <= M < N; "
               "found A (6, 3), b (6,)"),
    "M = 0": (_npz(A=np.ones((0, 3)), b=np.ones(0)), "1 <= M < N; found A (0, 3), b (0,)"),
    "b (3, 1)": (_npz(A=np.ones((3, 6)), b=np.ones((3, 1))),
                 "A and b disagree: b must have shape (3,); found A (3, 6), b (3, 1)"),
    "x_star (5,)": (_npz(A=np.ones((3, 6)), b=np.ones(3), x_star=np.ones(5)),
                    "A and x_star disagree: x_star must have shape (6,); found A (3, 6), b (3,), "
                    "x_star (5,)"),
}


@pytest.mark.parametrize("kind", BAD_INSTANCE_FILES)
def test_a_bad_instance_file_gets_one_message_at_validation_and_at_run_time(tmp_path: Path,
                                                                             kind: str):
    """The sweep's validation (SpecError on problem.file) and a task loading the instance
    (problems.load_instance, InstanceError) read the file with one reader: the same message,
    naming the file."""
    write, words = BAD_INSTANCE_FILES[kind]
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "inst.npz"
    write(path)
    with pytest.raises(problems.InstanceError) as at_run:
        problems.load_instance(path, signed=False)
    with pytest.raises(SpecError) as at_validation:
        parse_spec(FILE_SWEEP, base_dir=str(tmp_path))
    assert at_validation.value.field == "problem.file"
    assert at_validation.value.message == str(at_run.value)
    assert str(at_run.value).startswith(f"{path}: ") and words in str(at_run.value), \
        str(at_run.value)


def test_negative_x_star_is_refused_for_nonneg_only(tmp_path: Path):
    """A check of sweep validation alone: it knows the signs the file is used with."""
    A = np.ones((3, 6))
    np.savez(tmp_path / "inst.npz", A=A, b=np.ones(3), x_star=np.full(6, -0.5))
    with pytest.raises(SpecError) as info:
        parse_spec(FILE_SWEEP.replace("data/inst.npz", "inst.npz"), base_dir=str(tmp_path))
    assert info.value.field == "problem.file"
    assert "x_star has negative entries (min -0.5) but sign includes nonneg" in info.value.message
    signed = parse_spec(FILE_SWEEP.replace("data/inst.npz", "inst.npz")
                        .replace("[nonneg, signed]", "signed"), base_dir=str(tmp_path))
    assert signed.problem.file_has_x_star


def test_instance_not_npz(tmp_path: Path):
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "inst.npz", "wb") as f:  # a plain .npy under an .npz name
        np.save(f, np.ones(3))
    with pytest.raises(SpecError, match="single array"):
        parse_spec(FILE_SWEEP, base_dir=str(tmp_path))
    (tmp_path / "data" / "inst.npz").write_text("not a zip")
    with pytest.raises(SpecError, match="problem.file"):
        parse_spec(FILE_SWEEP, base_dir=str(tmp_path))


#: A sweep file of wnsweep 0.3 that left the WN schedule to its default (then ``constant``), with
#: the spec hash and run ids 0.3 gave it.
NO_SCHEDULE = """\
name: no-schedule
problem: {M: 6, N: 12, sparsity: 2}
model: {depth: 2}
init: {alpha: [0.01, 0.1]}
methods: {gd: {eta: 0.05}, wn: {eta: 0.05, eta_ratio: 0.1}}
train: {max_iters: 100}
"""
NO_SCHEDULE_0_3 = ("1457981c676f02bfed15c585ecbc21f139897772587c0dd8ffd46aaa33655531",
                   "9210d5d0134aa7549e511117d59b5b1c4d191d230db1ec924915d090046128bf")


def test_the_wn_schedule_is_required_and_constant_keeps_what_files_without_it_meant():
    with pytest.raises(SpecError) as err:
        parse_spec(NO_SCHEDULE)
    assert err.value.field == "methods.wn.schedule"
    assert "normalized is stable at every alpha" in err.value.message
    spec = parse_spec(NO_SCHEDULE.replace("eta_ratio: 0.1}", "eta_ratio: 0.1, schedule: constant}"))
    ids = sorted(r.run_id for r in make_plan(spec).runs)
    assert (spec.spec_hash, hashlib.sha256("\n".join(ids).encode()).hexdigest()) == NO_SCHEDULE_0_3
