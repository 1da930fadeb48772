"""One results-folder layer (pipeline/results/folder.py): damaged folders get the same verdict from
`wnsweep status` (and resume) and from `analysis.load`.

Every case starts from a copy of one real sweep (serial executor, two tasks of 40 runs) and damages
it on the local disk with real Parquet files; nothing is mocked.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import analysis
from analysis import ShardError
from pipeline import cli, sweep
from pipeline.results import store
from tests.conftest import TINY_SWEEP

TOTAL = 80  # runs of the base sweep, in two tasks of 40


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    path = folder / "tiny.yaml"
    path.write_text(TINY_SWEEP.format(name="tiny", trials=1, eta=0.02, max_iters=200))
    out = folder / "out"
    outcome = sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                              task_seconds=0.01)
    assert outcome.computed == TOTAL and outcome.tasks == 2
    return out


@pytest.fixture
def results(base, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(base, out)
    return out


def first(out: Path, kind: str = "runs") -> Path:
    return sorted((out / kind).glob("part-*.parquet"))[0]


def rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    """Replace a shard by ``change(table)``, keeping its schema metadata (wnsweep.rows too)
    unless ``change`` sets it."""
    table = pq.read_table(path)
    changed = change(table)
    meta = {**table.schema.metadata, **(changed.schema.metadata or {})}
    pq.write_table(changed.replace_schema_metadata(meta), path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def set_column(name: str, array_of: Callable[[pa.Table], pa.Array]):
    def change(table: pa.Table) -> pa.Table:
        return table.set_column(table.schema.get_field_index(name), name, array_of(table))
    return change


def repeat_first_row(table: pa.Table) -> pa.Table:
    longer = pa.concat_tables([table, table.slice(0, 1)])
    meta = {**table.schema.metadata, b"wnsweep.rows": str(longer.num_rows).encode()}
    return longer.replace_schema_metadata(meta)


# (case, damage(out) -> the shard the verdict names, verdict, words of the reason)
CASES = [
    ("truncated", lambda o: _do(first(o), truncate), "corrupt", "not a readable Parquet file"),
    ("garbage", lambda o: _do(first(o), lambda p: p.write_bytes(b"PAR1 garbage PAR1")),
     "corrupt", "not a readable Parquet file"),
    ("missing-column", lambda o: _do(first(o), lambda p: rewrite(p, lambda t: t.drop(["alpha"]))),
     "corrupt", "missing required column(s) alpha"),
    ("wrong-type", lambda o: _do(first(o), lambda p: rewrite(p, set_column(
        "alpha", lambda t: pa.array(["0.05"] * len(t))))),
     "corrupt", "incompatible column type(s) alpha: string (expected double)"),
    ("row-count", lambda o: _do(first(o), lambda p: rewrite(p, lambda t: t.slice(0, 39))),
     "corrupt", "holds 39 rows, its metadata says 40"),
    ("repeated-run-id", lambda o: _do(first(o), lambda p: rewrite(p, repeat_first_row)),
     "corrupt", "repeats a run_id"),
    ("damaged-instances", lambda o: _do(first(o, "instances"), truncate),
     "corrupt", "instances shard: not a readable Parquet file"),
    ("no-instances-shard", lambda o: _gone(first(o, "instances"), first(o)),
     "missing-instances", "its instances shard is missing"),
]


def _do(path: Path, damage: Callable[[Path], None]) -> Path:
    damage(path)
    return path


def _gone(path: Path, named: Path) -> Path:
    path.unlink()
    return named


def status_of(out: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["status", str(out)])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("case, damage, verdict, reason", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_shard_gets_one_verdict_from_status_and_load(
        results, capsys, case, damage, verdict, reason):
    victim = damage(results)
    task = victim.stem  # part-<task>: the same name in runs/ and instances/

    code, text = status_of(results, capsys)
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(task)]
    assert code == 1 and f"{task}  {verdict}" in line and reason in line, text
    assert f"done {TOTAL - 40} / {TOTAL} runs, missing 40, corrupt shards 1" in text

    with pytest.raises(ShardError) as raised:
        analysis.load(results)
    assert raised.value.path == str(victim) and str(victim) in str(raised.value)
    assert raised.value.reason.startswith(f"{verdict}: ") and reason in raised.value.reason
    assert raised.value.reason.split(": ", 1)[1] in line  # status says the same words

    with pytest.warns(UserWarning, match=f"skipping bad shard {victim}") as caught:
        df = analysis.load(results, on_corrupt="skip")
    assert len(caught) == 1
    assert df.attrs["skipped_shards"] == [str(victim)]
    # what load keeps is exactly what resume counts as stored (the rest is recomputed)
    assert set(df.run_id) == store.ResultsStore(str(results)).inventory().run_ids
    assert len(df) == TOTAL - 40 and df.run_id.is_unique


def test_an_instances_shard_without_runs_is_harmless_to_both(results, capsys):
    runs = first(results)
    runs.unlink()
    code, text = status_of(results, capsys)
    assert code == 1  # 40 runs are missing, but nothing is corrupt
    assert f"{runs.stem}  orphan-instances" in text and "corrupt shards 0" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = analysis.load(results)
    assert len(df) == TOTAL - 40 and df.attrs["skipped_shards"] == []
    assert set(df.run_id) == store.ResultsStore(str(results)).inventory().run_ids


def test_files_that_are_not_shards_are_ignored_by_both_and_listed(results, capsys):
    shard = first(results)
    ignored = {
        "runs/notes.txt": b"a user's notes",
        "runs/extra.parquet": shard.read_bytes(),  # valid Parquet, but not part-*.parquet
        "runs/.tmp-xyz-part-abc.parquet": shard.read_bytes()[:100],  # an interrupted write
        "instances/README": b"",
    }
    for name, data in ignored.items():
        (results / name).write_bytes(data)
    code, text = status_of(results, capsys)
    assert code == 0, text  # complete and healthy
    for name in ignored:
        assert f"  {name}  ignored" in text
    assert "done 80 / 80 runs, missing 0, corrupt shards 0" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not read, not warned about
        df = analysis.load(results)
    assert len(df) == TOTAL and df.run_id.is_unique


def test_a_run_stored_in_two_shards_is_flagged_by_status_and_kept_once_by_load(results, capsys):
    for kind in ("runs", "instances"):
        shutil.copy(first(results, kind), results / kind / "part-zzzz.parquet")
    code, text = status_of(results, capsys)
    assert code == 1 and "40 run_ids are stored in more than one shard" in text
    with pytest.warns(UserWarning, match="40 duplicate run_id"):
        df = analysis.load(results)
    assert len(df) == TOTAL and df.run_id.is_unique


def test_castable_types_are_valid_for_both_and_read_as_the_schema(results, capsys, base):
    """The one type rule: an int32 L or a large_string method holds the same values."""
    victim = first(results)
    rewrite(victim, set_column("L", lambda t: t.column("L").cast(pa.int32())))
    rewrite(victim, set_column("method", lambda t: t.column("method").cast(pa.large_string())))
    code, text = status_of(results, capsys)
    assert code == 0 and f"{victim.stem}  done" in text
    df, before = analysis.load(results), analysis.load(base)
    assert str(df.L.dtype) == "int64" and df.equals(before)


def test_a_resume_after_damage_recomputes_exactly_the_damaged_shard(results, base):
    victim = first(results)
    rewrite(victim, lambda t: t.slice(0, 39))  # readable, but rows lost
    spec_path = base.parent / "tiny.yaml"
    again = sweep.run_sweep(str(spec_path), out=str(results), executor="serial", progress=False,
                            task_seconds=0.01)
    assert again.already == TOTAL - 40 and again.computed == 40
    assert (results / "corrupt" / f"runs-{victim.name}").exists()
    assert set(analysis.load(results).run_id) == set(analysis.load(base).run_id)


def test_an_unreadable_manifest_is_named_by_status_and_load_provenance(results, capsys):
    (results / "manifest.json").write_text("{not json")
    assert cli.main(["status", str(results)]) == 2
    assert f"{results / 'manifest.json'}: not valid JSON" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="manifest.json: not valid JSON"):
        provenance = analysis.load_provenance(results)
    assert provenance["manifest"] is None and provenance["sweep_yaml"].startswith("name: tiny")
    assert len(analysis.load(results)) == TOTAL  # the shards do not depend on it
