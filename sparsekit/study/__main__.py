"""``python -m sparsekit.study``: run a study from its JSON spec, show its status, export its results.

    python -m sparsekit.study run SPEC.json [--backend local|ray] [--ray ADDRESS] [--workers N]
    python -m sparsekit.study status SPEC.json
    python -m sparsekit.study export SPEC.json --format csv|json [--table records|summary] [--out FILE]

The spec file is ``StudySpec.to_json()`` (what the Studies page writes). Progress goes to stderr, results
to stdout. A bad spec or an unreachable Ray cluster ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import aggregate
from .runner import export, run_study, study_status
from .spec import StudySpec
from .store import StudyStatus


def _read_spec(path: str) -> StudySpec:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"cannot read the spec file {path}: {err.strerror or err}") from None
    spec = StudySpec.from_json(text)
    spec.validate()
    return spec


def _printer() -> Callable[[StudyStatus], None]:
    last: list[tuple[int, int, int, str]] = []

    def show(status: StudyStatus) -> None:
        # One line per change of the counts, not per poll.
        now = (status.done, status.failed, status.retries, status.state)
        if not last or last[0] != now:
            print(status.line(), file=sys.stderr, flush=True)
            last[:] = [now]

    return show


def _run(args: argparse.Namespace) -> int:
    spec = _read_spec(args.spec)
    backend = args.backend or ("ray" if args.ray else None)
    print(f"study {spec.name!r}: {spec.cell_count()} cells ({spec.kind}); finished cells come from the cache",
          file=sys.stderr)
    result = run_study(spec, backend, ray_address=args.ray, workers=args.workers, progress=_printer())
    print(aggregate.summary_markdown(result.summary(), spec.metrics or None))
    for r in result.failed:
        print(f"FAILED {r.model} {r.pattern} {r.method} seed {r.seed}: {r.error}", file=sys.stderr)
    return 1 if result.failed else 0


def _status(args: argparse.Namespace) -> int:
    status = study_status(_read_spec(args.spec))
    print(status.line())
    if args.json:
        print(json.dumps(status.as_dict(), indent=1))
    return 0


def _export(args: argparse.Namespace) -> int:
    text = export(_read_spec(args.spec), args.format, table=args.table)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsekit.study",
                                     description="Grids of sparsity experiments, locally or on a Ray cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study (finished cells are reused)")
    run.add_argument("spec", help="the study's JSON spec")
    run.add_argument("--backend", choices=("local", "ray"), default=None,
                     help="local (default) or ray (default when --ray or SPARSEKIT_RAY_ADDRESS is given)")
    run.add_argument("--ray", default=None, metavar="ADDRESS",
                     help="Ray cluster: host:port, ray://host:port, auto, or local (start one here)")
    run.add_argument("--workers", type=int, default=None, help="local worker processes (default: this process)")
    run.set_defaults(func=_run)
    status = sub.add_parser("status", help="where a study stands (also while it runs elsewhere)")
    status.add_argument("spec")
    status.add_argument("--json", action="store_true", help="also print the whole status as JSON")
    status.set_defaults(func=_status)
    exp = sub.add_parser("export", help="results from the cache as CSV or JSON")
    exp.add_argument("spec")
    exp.add_argument("--format", choices=("csv", "json"), default="csv")
    exp.add_argument("--table", choices=("records", "summary"), default="records", help="CSV: per cell or per group")
    exp.add_argument("--out", default=None, help="write here instead of stdout")
    exp.set_defaults(func=_export)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, ConnectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; finished cells are kept, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
