"""``wnsweep plan | run | status | report`` (also ``python -m pipeline ...``).

Exit status: 0 done; 1 some tasks failed (the rest is stored; rerun to retry them); 2 bad input
(sweep file, output folder or arguments: one message, nothing written), an unreachable Ray
cluster, or another `wnsweep run` holding the folder's driver lock; 3 the results folder could not
be written (disk full, permission denied, an object store refusing a write: one message naming the
folder and the cause; what was stored is kept, and rerunning the same command resumes); 130
interrupted (finished shards are kept; rerun the same command to continue).
"""

from __future__ import annotations

import argparse
import sys

from pipeline import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wnsweep", description="Sweeps of GD vs weight-normalized GD on diagonal linear "
        "networks, with basis-pursuit references, on Ray.")
    parser.add_argument("--version", action="version", version=f"wnsweep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="count runs, instances and tasks; estimate the cost")
    p.add_argument("sweep", help="sweep file (YAML)")
    p.add_argument("--out", help="output folder or URI (default results/<name>)")
    p.add_argument("--max-runs", type=int, help="refuse a sweep of more runs (default 100 "
                   "million); counted before anything is planned")
    _executor_options(p, "the tasks are counted for")

    r = sub.add_parser("run", help="run (or resume) a sweep")
    r.add_argument("sweep", help="sweep file (YAML)")
    r.add_argument("--out", help="output folder or URI, e.g. s3://bucket/prefix "
                   "(default results/<name>)")
    _executor_options(r, "to run on")
    r.add_argument("--max-runs", type=int, help="refuse a sweep of more runs (default 100 "
                   "million); counted before anything is planned or written")
    r.add_argument("--force", action="store_true",
                   help="discard results written to --out by a different spec")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--verbose", action="store_true",
                   help="show Ray's start-up logs and warnings, the workers' output and the "
                   "solver's banner (default: only the progress bar, the summary and errors)")

    s = sub.add_parser("status", help="done / missing / corrupt, per shard")
    s.add_argument("results", help="results folder or URI")

    rep = sub.add_parser("report", help="phase diagrams, figures and tables of a results folder")
    rep.add_argument("results", help="results folder or URI")
    rep.add_argument("--out", help="report folder (default <results>/report)")
    rep.add_argument("--threshold", type=float, default=1e-3,
                     help="recovery threshold on rel_error_l1 (default 1e-3)")
    return parser


def _executor_options(p: argparse.ArgumentParser, what: str) -> None:
    """The options that decide how a sweep is cut into tasks: `plan` and `run` take the same."""
    p.add_argument("--executor", choices=("ray", "serial"), default="ray",
                   help="ray (default): Ray tasks, at least 8 per CPU; serial: in this process, "
                   "no Ray")
    p.add_argument("--address", help=f"Ray cluster {what}: auto or HOST:PORT (default: "
                   "RAY_ADDRESS if set, else a new local Ray instance)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray instance (default: all "
                   "that Ray detects)")
    p.add_argument("--task-seconds", type=float, default=None,
                   help="estimated work per task (default: pipeline.plan.TASK_SECONDS, 20 s)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import pyarrow as pa

    from pipeline.results.folder import ResultsNotFoundError, StoreError
    from pipeline.spec import SpecError
    from pipeline.results.store import StoreWriteError

    try:
        return _dispatch(args)
    except StoreWriteError as exc:  # disk full, no permission, a store refusing: one line
        print(f"wnsweep: {exc.message()}", file=sys.stderr)
        return 3
    except (SpecError, StoreError, ResultsNotFoundError, ConnectionError) as exc:
        print(f"wnsweep: error: {exc}", file=sys.stderr)
        return 2
    except pa.ArrowInvalid as exc:  # a malformed --out / results URI
        print(f"wnsweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nwnsweep: interrupted; finished shards are kept. Rerun the same command to "
              "continue.", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from pipeline import sweep

    max_runs = getattr(args, "max_runs", None)
    if max_runs is not None and max_runs < 1:
        print("wnsweep: error: --max-runs must be >= 1", file=sys.stderr)
        return 2
    max_runs = max_runs or sweep.MAX_RUNS
    if args.command in ("plan", "run"):
        if args.task_seconds is not None and args.task_seconds <= 0:
            print("wnsweep: error: --task-seconds must be > 0", file=sys.stderr)
            return 2
        if args.num_cpus is not None and args.num_cpus < 1:
            print("wnsweep: error: --num-cpus must be >= 1", file=sys.stderr)
            return 2
    if args.command == "plan":
        print(sweep.plan_text(args.sweep, args.out, max_runs=max_runs, executor=args.executor,
                              address=args.address, num_cpus=args.num_cpus,
                              task_seconds=args.task_seconds))
        return 0
    if args.command == "run":
        if not args.verbose and args.executor == "serial":  # computes in this process
            from pipeline import families

            for family in families.REGISTRY.values():
                family.quiet()
        outcome = sweep.run_sweep(
            args.sweep, out=args.out, executor=args.executor, address=args.address,
            force=args.force, progress=False if args.no_progress else None,
            num_cpus=args.num_cpus, task_seconds=args.task_seconds, verbose=args.verbose,
            max_runs=max_runs)
        print(f"{outcome.computed} runs computed in {outcome.seconds:.1f} s "
              f"({outcome.already} already stored, {outcome.planned} planned) -> {outcome.out}")
        if outcome.write_problem:
            print(f"wnsweep: tasks could not write their shards to {outcome.out} where they ran "
                  f"({outcome.write_problem}); the driver wrote {outcome.written_by_driver} "
                  "task(s) instead (docs/CLUSTER.md: give the workers write access)",
                  file=sys.stderr)
        for task_id, error in outcome.failed:
            print(f"wnsweep: task {task_id} failed: {error}", file=sys.stderr)
        if outcome.failed:
            print(f"wnsweep: {len(outcome.failed)} tasks failed; rerun to retry them",
                  file=sys.stderr)
            return 1
        return 0
    if args.command == "status":
        text, healthy = sweep.status_text(args.results)
        print(text)
        return 0 if healthy else 1
    if args.command == "report":
        from analysis.report import write_report

        result = write_report(args.results, out_dir=args.out, threshold=args.threshold)
        print(result.summary())
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
