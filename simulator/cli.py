"""The `veil` command. Every subcommand is reachable in-process through `main(argv)`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulator.schema import ScenarioError, load_scenario

EXIT_INVALID = 2


def _validate(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.file, args.set)
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    print(scenario.resolved_yaml(), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    from simulator.launcher import (  # torch and flwr load here, not for validate
        RunFailed,
        resume_run,
        start_run,
    )

    try:
        if args.resume and args.set:
            print(
                "veil run: --set cannot change a resumed run; it keeps its resolved scenario", file=sys.stderr
            )
            return EXIT_INVALID
        if args.resume:
            run_dir = resume_run(Path(args.resume), ray_address=args.ray_address)
        else:
            if not args.file:
                print("veil run: give a scenario FILE or --resume RUN_DIR", file=sys.stderr)
                return EXIT_INVALID
            scenario = load_scenario(args.file, args.set)
            run_dir = start_run(scenario, out=Path(args.out), ray_address=args.ray_address)
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    except RunFailed as err:
        print(f"veil run failed: {err}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from reports.tables import render_report

    print(render_report(Path(args.run_dir)))
    return 0


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field, e.g. --set dpm.objective=distill --set entities[1].fraction=0.2",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veil", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a scenario and print it resolved, or every error at once")
    p.add_argument("file")
    _add_overrides(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser("run", help="run a scenario as a Flower simulation on Ray")
    p.add_argument("file", nargs="?")
    _add_overrides(p)
    p.add_argument("--out", default="runs", help="where run directories go (default: runs/)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="skip the finished stages of RUN_DIR and complete the rest"
    )
    p.add_argument("--ray-address", default=None, help="join an existing Ray cluster instead of starting one")
    p.set_defaults(func=_run)

    p = sub.add_parser("report", help="print a run's tables beside the paper's numbers")
    p.add_argument("run_dir")
    p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
