"""The `veil` command. Every subcommand is reachable in-process through `main(argv)`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from entities.files import read_regular
from reports.formats import manifest_problems
from simulator.cluster import ClusterError
from simulator.preflight import (
    check_dataset,
    check_devices,
    check_new_run,
    check_out_dir,
    check_scenario_unchanged,
    check_writable,
    work_warnings,
)
from simulator.rundir import RUN_ORDER
from simulator.schema import Problem, ScenarioError, load_scenario

EXIT_INVALID = 2
MAX_MANIFEST_BYTES = 1 << 24


def _validate(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.file, args.set)
        root = getattr(scenario.dataset, "root", None)
        if isinstance(root, Path) and not root.exists():  # a scenario for another machine's data
            note = f"note: dataset.root {root} is not on this machine; `veil run` checks its files"
            print(note, file=sys.stderr)
        elif not args.schema_only:
            check_dataset(scenario)
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    # a scenario may be written for another machine: what this one could not do is a warning here
    here = check_devices(scenario, cluster=True, gpus=False, because="`veil run` refuses it on this machine")
    for line in work_warnings(scenario) + here:
        print(f"warning: {line}", file=sys.stderr)
    print(scenario.resolved_yaml(), end="")
    return 0


def check_resumable(root: Path) -> None:
    """Raise ScenarioError naming the file when `root` is not a run directory that --resume can complete.

    Reads only: nothing is written, locked or repaired before the run directory is known to be one.
    """
    where = str(root)
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except OSError as err:  # a name too long for the file system, say
        raise ScenarioError(
            where, [Problem("(directory)", f"{err.strerror}; expected a run directory")]
        ) from None
    if not exists:
        raise ScenarioError(where, [Problem("(directory)", "does not exist; expected a run directory")])
    if not is_dir:
        raise ScenarioError(where, [Problem("(directory)", "is a file; expected a run directory")])
    manifest = root / "manifest.json"
    try:
        data = json.loads(read_regular(manifest, MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        problem = Problem(
            "manifest.json", "missing; expected the manifest `veil run` writes (not a run directory?)"
        )
        raise ScenarioError(where, [problem]) from None
    except OSError as err:
        raise ScenarioError(where, [Problem("manifest.json", f"cannot read: {err.strerror}")]) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        what = (
            f"line {err.lineno}, column {err.colno}: {err.msg}"
            if isinstance(err, json.JSONDecodeError)
            else err
        )
        problem = Problem(
            "manifest.json", f"not valid JSON ({what}); expected the manifest `veil run` writes"
        )
        raise ScenarioError(where, [problem]) from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        problem = Problem(
            "manifest.json", "expected a JSON object with a 'stages' mapping, as `veil run` writes"
        )
        raise ScenarioError(where, [problem])
    problems = [
        Problem(f"manifest.json: {line.partition(': ')[0]}", line.partition(": ")[2])
        for line in manifest_problems(data)
    ]
    known = stage_names()
    for name in data["stages"]:
        if name not in known:
            problems.append(
                Problem(
                    f"manifest.json: stages.{name:.60}", f"no such stage; expected one of {', '.join(known)}"
                )
            )
    if problems:
        raise ScenarioError(where, problems)
    load_scenario(root / "scenario.yaml")  # its own ScenarioError names the file


def stage_names() -> list[str]:
    """The names of the stages a run has: simulator.rundir.RUN_ORDER, and where plugins (VEIL_PLUGINS) or
    this process registered more, theirs (that needs torch: only then are the stages imported)."""
    import os

    if "simulator.stages" not in sys.modules and not os.environ.get("VEIL_PLUGINS"):
        return list(RUN_ORDER)
    from simulator.stages import stage_order

    return [stage.name for stage in stage_order()]


def _wants_sweep(args: argparse.Namespace) -> bool:
    from simulator.sweep import is_list_value, is_sweep

    if args.resume:
        try:
            return is_sweep(Path(args.resume)) or args.seeds is not None
        except OSError:  # a name too long: check_resumable says so
            return args.seeds is not None
    return args.seeds is not None or any(is_list_value(item.partition("=")[2]) for item in args.set)


def _write_report(args: argparse.Namespace, path: Path) -> int:
    """`veil run --report`: the report of the finished run or sweep (as `veil report` writes it)."""
    if not args.report:
        return 0
    return _report(argparse.Namespace(run_dir=str(path), quiet=True))


def _run_sweep(args: argparse.Namespace) -> int:
    """Several runs (--seeds, a list-valued --set) under one sweep directory; or --resume of a sweep."""
    from simulator.sweep import SweepInvalid, check_sweep, create_sweep, parse_seeds, plan_sweep

    cluster = args.ray_address is not None
    try:  # every run's scenario validated before anything is written
        parallel = parse_parallel(args.parallel)
        _check_cluster_flags(args)
        if args.resume:
            if args.set or args.seeds is not None:
                print("veil run: a resumed sweep keeps its runs; drop --set and --seeds", file=sys.stderr)
                return EXIT_INVALID
            root = Path(args.resume)
            for run_dir in check_sweep(root):  # sweep.json, and each run it lists, before anything runs
                check_resumable(run_dir)
                check_scenario_unchanged(run_dir)
                _warn(
                    check_devices(
                        load_scenario(run_dir / "scenario.yaml"), cluster=cluster, engine=args.engine
                    )
                )
            check_writable(root, "--resume")
        else:
            if not args.file:
                print("veil run: give a scenario FILE or --resume RUN_DIR", file=sys.stderr)
                return EXIT_INVALID
            plan = plan_sweep(
                args.file, args.set, parse_seeds(args.seeds) if args.seeds is not None else None
            )
            checked: set[str] = set()
            for planned in plan.runs:  # each distinct dataset once: a sweep over seeds reads one
                key = planned.scenario.dataset.model_dump_json() + str(planned.scenario.task_seed)
                _warn(check_devices(planned.scenario, cluster=cluster, engine=args.engine))
                if key not in checked:
                    check_dataset(planned.scenario)
                    checked.add(key)
            _warn(work_warnings(plan.runs[0].scenario))
            out = _out_dir(args.out)
            check_writable(out, "--out")
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    except SweepInvalid as err:
        print(f"veil run: no run started, nothing written:\n{err}", file=sys.stderr)
        return EXIT_INVALID
    if args.resume:
        from simulator.rundir import RunDamaged, verify_stored

        try:
            for run_dir in check_sweep(root):
                verify_stored(run_dir)
        except RunDamaged as err:
            print(f"veil run failed: {err}", file=sys.stderr)
            return 1
    if rc := _check_cluster_nodes(args, root if args.resume else out):
        return rc
    if not args.resume:
        root = create_sweep(plan, out)
        print(f"sweep directory: {root} ({len(plan.runs)} runs)", file=sys.stderr)

    if parallel is not None:
        from simulator.sweep import SweepStopped, run_parallel  # no torch here: each run is a child process

        if args.ray_address is not None:  # the children join the cluster themselves
            import ray

            ray.shutdown()

        try:
            failures = run_parallel(root, parallel, engine=args.engine, ray_address=args.ray_address)
        except SweepStopped as err:
            print(f"veil run: {err}; `veil run --resume {root}` completes the sweep", file=sys.stderr)
            return 128 + err.signum
    else:
        from simulator.engines import Stopped
        from simulator.sweep import run_sweep  # torch and flwr load here

        try:
            failures = run_sweep(
                root, engine=args.engine, ray_address=args.ray_address, share_ray=not args.ray_per_run
            )
        except Stopped as err:
            print(f"veil run {err}: `veil run --resume {root}` completes the sweep", file=sys.stderr)
            return 128 + err.signum
        except ClusterError as err:
            print(f"veil run: {err}", file=sys.stderr)
            return EXIT_INVALID
    print(f"sweep directory: {root}")
    if failures:
        for line in failures:
            print(f"veil run failed: {line}", file=sys.stderr)
        print(f"veil run --resume {root} completes the sweep", file=sys.stderr)
        return 1
    return _write_report(args, root)


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _check_cluster_flags(args: argparse.Namespace) -> None:
    """--ray-address: the flower engine, and a head that answers (simulator.cluster), before anything is
    written; the run's paths made absolute, since the nodes read them from other working directories."""
    if args.ray_address is None:
        return
    if args.engine == "inline":
        raise ScenarioError(
            "--ray-address",
            [Problem("--ray-address", "needs the flower engine; --engine inline runs every party here")],
        )
    from simulator.cluster import check_reachable, connect

    check_reachable(args.ray_address)
    try:  # joined now, so that a head that answers TCP but is no Ray head leaves nothing written either
        connect(args.ray_address)
    except ClusterError as err:
        raise ScenarioError("--ray-address", [Problem("--ray-address", str(err))]) from None
    if args.resume:
        args.resume = str(Path(args.resume).absolute())
    args.out = str(Path(args.out).absolute())


def _check_cluster_nodes(args: argparse.Namespace, directory: Path) -> int:
    """--ray-address: every alive Ray node reads a probe written in `directory`; 0, or EXIT_INVALID with
    the nodes that cannot. Stays connected (_check_cluster_flags joined): the run's Flower backend reuses it.
    """
    if args.ray_address is None:
        return 0
    from simulator.cluster import check_nodes_see

    try:
        seen = check_nodes_see(directory)
        print(f"ray cluster at {args.ray_address}: {seen} node(s), each reads {directory}", file=sys.stderr)
    except ClusterError as err:
        print(f"veil run: {err}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def parse_parallel(text: str | None) -> int | None:
    """--parallel N: a whole number >= 1, or "auto" (the flag without N: simulator.sweep.default_parallel);
    None without the flag."""
    if text is None or text == "auto":
        return None if text is None else 0
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1 or str(n) != text.strip().lstrip("+"):
        raise ScenarioError(
            "--parallel",
            [Problem("--parallel", f"{text!r}: expected a whole number of runs at once, 1 or more")],
        )
    return n


def _out_dir(text: str) -> Path:
    """--out as a directory path: refused when it is a file or its name cannot be one."""
    return check_out_dir(Path(text), "--out")


def _dry_run(args: argparse.Namespace) -> int:
    """`veil run FILE --dry-run`: the plan of one run on this machine (simulator.plan); writes nothing."""
    if args.resume or args.report:
        flag = "--resume" if args.resume else "--report"
        print(f"veil run: --dry-run plans a new run; drop {flag}", file=sys.stderr)
        return EXIT_INVALID
    if _wants_sweep(args):
        print(
            "veil run: --dry-run plans one run; drop --seeds and give each --set one value "
            "(a sweep's runs each need what one run needs, one after another)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if not args.file:
        print("veil run: give a scenario FILE", file=sys.stderr)
        return EXIT_INVALID
    try:
        scenario = load_scenario(args.file, args.set)
        from simulator.plan import dry_run  # torch loads here

        text, _ = dry_run(scenario, Path(args.out))
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    print(text, end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.parallel not in (None, "auto") and args.file is None and not args.parallel.strip().isdigit():
        if Path(args.parallel).is_file():  # `--parallel FILE --seeds ...`: the flag took the file as its N
            args.file, args.parallel = args.parallel, "auto"
    if args.dry_run:
        return _dry_run(args)
    if _wants_sweep(args):
        return _run_sweep(args)
    try:  # the inputs first, before torch and flwr load and before anything is written
        if args.parallel is not None:
            parse_parallel(args.parallel)  # a bad N is named first, like in a sweep
            raise ScenarioError(
                "--parallel",
                [
                    Problem(
                        "--parallel",
                        "spreads the runs of a sweep (--seeds, a list-valued --set); this is one run",
                    )
                ],
            )
        _check_cluster_flags(args)
        if args.resume and args.set:
            print(
                "veil run: --set cannot change a resumed run; it keeps its resolved scenario", file=sys.stderr
            )
            return EXIT_INVALID
        cluster = args.ray_address is not None
        if args.resume:
            check_resumable(Path(args.resume))
            check_scenario_unchanged(Path(args.resume))
            _warn(
                check_devices(
                    load_scenario(Path(args.resume) / "scenario.yaml"), cluster=cluster, engine=args.engine
                )
            )
            check_writable(Path(args.resume), "--resume")
        else:
            if not args.file:
                print("veil run: give a scenario FILE or --resume RUN_DIR", file=sys.stderr)
                return EXIT_INVALID
            out = Path(args.out)
            scenario = check_new_run(args.file, args.set, out, _warn, cluster=cluster, engine=args.engine)
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID

    if rc := _check_cluster_nodes(args, Path(args.resume) if args.resume else out):
        return rc

    from simulator.rundir import RunDamaged, RunLock, RunLocked, verify_stored

    lock = None
    if args.resume:
        try:  # what the finished stages left, against the manifest's digests, before any stage reads it
            verify_stored(Path(args.resume))
        except RunDamaged as err:
            print(f"veil run failed: {err}", file=sys.stderr)
            return 1
        try:  # one writer per run directory: taken before anything of it is completed
            lock = RunLock(Path(args.resume))
        except RunLocked as err:
            print(f"veil run: {err}", file=sys.stderr)
            return EXIT_INVALID

    from simulator.launcher import (  # torch and flwr load here, not for validate
        RunFailed,
        Stopped,
        resume_run,
        start_run,
    )

    try:
        if args.resume:
            run_dir = resume_run(
                Path(args.resume), engine=args.engine, ray_address=args.ray_address, locked=True
            )
        else:
            run_dir = start_run(scenario, out=out, engine=args.engine, ray_address=args.ray_address)
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    except ClusterError as err:
        print(f"veil run: {err}", file=sys.stderr)
        return EXIT_INVALID
    except Stopped as err:
        again = f"veil run --resume {args.resume or 'RUN_DIR'}"
        print(f"veil run {err}: finished stages and rows are kept; `{again}` completes it", file=sys.stderr)
        return 128 + err.signum  # 130 for SIGINT, 143 for SIGTERM
    except (RunFailed, RunDamaged, OSError) as err:  # OSError: a disk that filled up mid-run, say
        print(f"veil run failed: {err}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.close()
    print(f"run directory: {run_dir}")
    return _write_report(args, run_dir)


def _report(args: argparse.Namespace) -> int:
    """Write report/ inside a run or sweep directory (reads files only: no torch, no simulation)."""
    from reports.compare import NotComparable, check_comparable, suspect_warnings
    from reports.report import write_report
    from reports.runs import RunFormatError, load_sweep
    from reports.tables import render_report
    from simulator.rundir import RunDamaged, verify_stored

    path = Path(args.run_dir)
    try:
        sweep = load_sweep(path)
        check_comparable(sweep)
    except (FileNotFoundError, RunFormatError, NotComparable) as err:
        print(f"veil report: {err}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as err:  # a name too long for the file system, a directory it may not read
        print(f"veil report: {path}: {err.strerror}; expected a run or sweep directory", file=sys.stderr)
        return EXIT_INVALID
    try:  # what the runs stored, against their manifests' digests, before anything is computed from it
        for run in sweep.runs:
            verify_stored(run.path, copy_ok=True)
    except RunDamaged as err:
        print(f"veil report: {err}", file=sys.stderr)
        return 1
    out = path / "report"
    try:
        if out.exists() and not out.is_dir():
            raise ScenarioError(
                str(out), [Problem("report", "is a file; expected a directory for the report")]
            )
        check_writable(out, "report", free_space=False)
    except ScenarioError as err:
        print(f"veil report: {err}", file=sys.stderr)
        return EXIT_INVALID
    _warn(suspect_warnings(sweep.runs))
    try:
        if len(sweep.runs) == 1 and not args.quiet:
            print(render_report(sweep.runs[0].path, plot_dir=out))
        index = write_report(sweep, out)
    except OSError as err:  # the disk filled up while writing, say
        print(f"veil report: cannot write {err.filename or out}: {err.strerror}", file=sys.stderr)
        return 1
    print(f"report: {index}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Means, SDs, t-intervals and paired differences over runs of one scenario (files only)."""
    from reports.compare import NotComparable, check_comparable, parameter, render_text
    from reports.runs import RunFormatError, load_many

    try:
        sweep = load_many(args.runs)
        check_comparable(sweep, args.vary)
        out = Path(args.out) if args.out else None
        if out is None and parameter(sweep, args.vary) is not None:
            out = sweep.path / "report" if sweep.path else Path("veil-compare")
        print(render_text(sweep, args.vary, out))
    except (FileNotFoundError, RunFormatError, NotComparable) as err:
        print(f"veil compare: {err}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as err:  # a name too long for the file system, a directory it may not read or write
        print(f"veil compare: {err.filename or ''}: {err.strerror}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _attacks(args: argparse.Namespace) -> int:
    """The attack catalogue and the threat models (entities.threats: no torch)."""
    from entities import threats

    width = max(map(len, threats.ATTACKS))
    for name, entry in threats.ATTACKS.items():
        print(f"{name:<{width}}  {entry.target:<5}  {entry.summary}")
        print(f"{'':<{width}}  needs: {', '.join(sorted(entry.needs))}")
    print("\nthreat models (adversaries[i].knowledge), and what each knows:")
    for model, words in threats.THREAT_MODELS.items():
        print(f"  {model}: {', '.join(sorted(words))}")
    print("  known_pairs: N > 0 adds known_pairs to any of them")
    return 0


def _supernode(args: argparse.Namespace) -> int:
    """`veil supernode`: one organisation's Flower SuperNode (simulator.deploy); its inputs checked first."""
    import os

    from simulator.deploy import node_env, start_supernode

    try:
        command = start_supernode(args.party, args.dir, args.superlink, args.scenario)
    except ScenarioError as err:
        if len(err.problems) == 1:  # one line: the option, and what was expected
            print(f"veil supernode: {err.problems[0]}", file=sys.stderr)
        else:
            print(err, file=sys.stderr)
        return EXIT_INVALID
    print(
        f"veil supernode: {args.party} in {Path(args.dir).absolute()}, SuperLink {args.superlink}",
        file=sys.stderr,
    )
    sys.stderr.flush()
    os.execve(command[0], command, node_env(Path(args.dir).absolute()))  # the node is this process from here


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
    p.add_argument(
        "--schema-only", action="store_true", help="check the file alone, not the dataset's files on disk"
    )
    p.set_defaults(func=_validate)

    p = sub.add_parser(
        "run",
        help="run a scenario as a Flower simulation on Ray (several seeds or values: a sweep)",
        description="Run a scenario. --seeds or a --set with a list of values runs a sweep: one run per "
        "seed (and value) under runs/<scenario>-sweep-<time>/, with sweep.json; `veil report` and "
        "`veil compare` read it.",
    )
    p.add_argument("file", nargs="?")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field, e.g. --set dpm.objective=distill --set entities[1].fraction=0.2; "
        "a comma-separated list (--set dpm.lambda=0.5,1,2) makes a sweep with one run per value "
        "(one such list per command; quote a value that holds a comma: --set 'description=\"a, b\"')",
    )
    p.add_argument(
        "--seeds",
        metavar="SEEDS",
        help="a sweep with one run per seed: 0-4, 0,2,5 or 0-2,7. The seeds change training only: each "
        "run gets `seed`, and `dataset.seed` (which photos and patches make the task) stays at the "
        "scenario's task seed unless the file or a --set sets dataset.seed, so every run has the same task",
    )
    p.add_argument(
        "--report", action="store_true", help="write the report (as `veil report`) at the end; print its path"
    )
    p.add_argument(
        "--ray-per-run",
        action="store_true",
        help="in a sweep, start Ray afresh for each run (by default the runs share one Ray instance)",
    )
    p.add_argument("--out", default="runs", help="where run directories go (default: runs/)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="skip the finished stages of RUN_DIR and complete the rest"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="join an existing Ray cluster (its head's address) instead of starting one; the run directory "
        "must be on storage every node mounts at the same path (checked at start)",
    )
    p.add_argument(
        "--parallel",
        nargs="?",
        const="auto",
        default=None,
        metavar="N",
        help="in a sweep, run N runs at once, each a `veil run --resume RUN` child process with its log in "
        "SWEEP/logs/; without N, as many as this machine's CPUs allow (CPUs // the CPUs one run asks for)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (parties, stages, images, pool bytes, disk and memory needed, a time per stage "
        "from a throughput measured here) without training or writing anything",
    )
    p.add_argument(
        "--engine",
        choices=("flower", "inline"),
        default="flower",
        help="flower: a Flower simulation on Ray, one node per party (default); "
        "inline: every party in this process, no Flower, no Ray (debugging, profiling)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "report",
        help="write report/ (HTML, Markdown, CSV, plots) in a run or sweep directory, beside the paper",
    )
    p.add_argument("run_dir", metavar="RUN_OR_SWEEP")
    p.add_argument("--quiet", action="store_true", help="do not print a single run's tables as text")
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "compare", help="runs of one scenario: mean, SD, 95%% t-interval per cell; paired differences; curves"
    )
    p.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="FIELD",
        help="a dotted scenario field the runs may differ in (a sweep's sweep.json names its own)",
    )
    p.add_argument(
        "--out", default=None, help="where curves against a varied field go (default: SWEEP/report)"
    )
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "supernode",
        help="one organisation's Flower SuperNode for a federation of machines (Flower's deployment engine)",
        description="Check the inputs, then run `flower-supernode --insecure` as PARTY, its private files "
        "under DIR; what the parties share reaches it as messages from the server. Start the federation with "
        "`flower-superlink --insecure` and `flwr run . CONNECTION` (README: A federation of machines).",
    )
    p.add_argument("--party", required=True, help="the party this organisation is, as the scenario names it")
    p.add_argument(
        "--dir", required=True, help="this party's own directory on this machine (new, or its own)"
    )
    p.add_argument(
        "--superlink", required=True, metavar="HOST:PORT", help="the SuperLink (port 8000 by default)"
    )
    p.add_argument(
        "--scenario", required=True, metavar="FILE", help="the scenario this organisation agreed to run"
    )
    p.set_defaults(func=_supernode)

    p = sub.add_parser("attacks", help="the registered attacks: what each attacks and what it needs to know")
    p.set_defaults(func=_attacks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
