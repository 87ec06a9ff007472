"""The ``recbandit`` command: serve, rebuild-model, export-log, demo, import-obd, train-embeddings, evaluate, promote."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path

from engine.errors import InvalidRequest, RecbanditError
from engine.eventlog import EVENT_LOG
from server.logs import configure as configure_logs
from server.settings import Settings

REBUILD_SETTINGS = ("data_dir", "exploration", "exploration_parameter", "interactions", "learning_rate", "reward_range")
"""The settings ``rebuild-model`` reads: where the log is, and the policy of a model started afresh."""


def _add_settings_flags(parser: argparse.ArgumentParser, names: Collection[str] | None = None) -> None:
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, help=f"default {f.default!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recbandit", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve Recommend/Feedback over gRPC")
    _add_settings_flags(serve)

    rebuild = commands.add_parser(
        "rebuild-model", help="relearn the model from the event log, when its checkpoint cannot be trusted",
        description="Learn every final outcome in the event log into a fresh model with the checkpoint's policy "
                    "(or, when its manifest is unreadable, the flags') and checkpoint it. Stop the server first.",
    )
    _add_settings_flags(rebuild, REBUILD_SETTINGS)

    export = commands.add_parser("export-log", help="write the joined event log as JSON Lines or Parquet")
    export.add_argument("--data-dir", default=Settings().data_dir)
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--format", choices=("jsonl", "parquet"), default=None, help="default: by --out suffix")

    demo = commands.add_parser("demo", help="run a simulated storefront against a fresh server")
    demo.add_argument("--events", type=int, default=20_000)
    demo.add_argument("--data-dir", type=Path, default=None, help="default: a new temporary folder")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--concurrency", type=int, default=4)
    demo.add_argument("--drift", action="store_true", help="the segments' tastes change at 60%% of the run")
    demo.add_argument("--no-embeddings", action="store_true", help="do not train LightFM embeddings halfway")

    obd = commands.add_parser("import-obd", help="import the Open Bandit Dataset sample into an event log")
    obd.add_argument("--data-dir", type=Path, default=Path("recbandit-obd"), help="default: recbandit-obd")
    obd.add_argument("--source", type=Path, default=None, help="the obp sdist or an extracted copy; default: download it")
    obd.add_argument("--cache-dir", type=Path, default=None, help="where the download is kept; default: DATA_DIR/cache")
    obd.add_argument("--policies", default="random,bts", help="comma-separated: random, bts")
    obd.add_argument("--campaigns", default="all,men,women", help="comma-separated: all, men, women")

    from training.embeddings import add_arguments as add_embedding_arguments

    embeddings = commands.add_parser("train-embeddings", help="train LightFM embeddings from the event log")
    add_embedding_arguments(embeddings)

    from training.evaluate import add_arguments as add_evaluate_arguments
    from training.registry import add_promote_arguments

    evaluate = commands.add_parser("evaluate", help="replay candidate policies on the log, estimate, track, register")
    add_evaluate_arguments(evaluate)
    promote = commands.add_parser("promote", help="move the champion alias to a registered policy version")
    add_promote_arguments(promote)
    return parser


def _rebuild_model(args: argparse.Namespace) -> int:
    from engine.rebuild import rebuild_model

    try:
        config = Settings.from_env(**{name: getattr(args, name) for name in REBUILD_SETTINGS}).engine_config()
    except (InvalidRequest, ValueError) as error:
        print(f"rebuild-model: {error}", file=sys.stderr)
        return 2
    try:
        rebuilt = rebuild_model(config)
    except (RecbanditError, sqlite3.DatabaseError, OSError) as error:
        print(f"rebuild-model: {_why_not_started(error, str(config.data_dir))}", file=sys.stderr)
        return 2
    print(f"rebuild-model: learned {rebuilt.outcomes_learned} outcomes from {rebuilt.event_log}; "
          f"the model is now {rebuilt.model_version} (exploration {rebuilt.bandit.exploration})")
    return 0


def _export_log(args: argparse.Namespace) -> int:
    from engine.eventlog import SQLiteEventLog
    from engine.export import export_jsonl, export_parquet
    from engine.rewards import RewardRules

    database = Path(args.data_dir) / EVENT_LOG
    if not database.exists():
        print(f"export-log: no event log at {database}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.resolve().parent == database.resolve().parent and out.suffix not in (".jsonl", ".parquet"):
        print(f"export-log: --out {out} would overwrite a file of the data directory; "
              "name the export *.jsonl or *.parquet", file=sys.stderr)
        return 2
    fmt = args.format or ("parquet" if out.suffix == ".parquet" else "jsonl")
    try:
        log = SQLiteEventLog(database, RewardRules())
        try:
            count = (export_parquet if fmt == "parquet" else export_jsonl)(log, out)
        finally:
            log.close()
    except (RecbanditError, sqlite3.DatabaseError, OSError, ValueError) as error:
        print(f"export-log: {_why_not_started(error, str(args.data_dir))}", file=sys.stderr)
        return 2
    print(f"wrote {count} {'slot rows' if fmt == 'parquet' else 'events'} to {out}")
    return 0


def _why_not_started(error: Exception, data_dir: str) -> str:
    """One line for a refused start: the error's own message, or what a damaged event log means."""
    if isinstance(error, sqlite3.OperationalError):
        return f"the event log {Path(data_dir) / EVENT_LOG} cannot be used ({error})"
    if isinstance(error, sqlite3.DatabaseError):
        return f"the event log {Path(data_dir) / EVENT_LOG} is not a readable SQLite database ({error})"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logs(args.log_level, "text", access_log=False)  # serve reads its own settings below
    if args.command == "serve":
        from server.app import serve

        overrides = {f.name: getattr(args, f.name) for f in fields(Settings)}
        try:
            settings = Settings.from_env(**overrides)
            settings.engine_config()  # reads every setting before anything starts
            configure_logs(args.log_level, settings.log_format, access_log=settings.access_log)
        except (InvalidRequest, ValueError) as error:
            print(f"serve: {error}", file=sys.stderr)
            return 2
        if warning := settings.reward_range_warning():
            logging.getLogger("recbandit.serve").warning(warning)
        try:
            serve(settings)
        except (RecbanditError, sqlite3.DatabaseError, OSError, ValueError) as error:  # refused at start: one line
            print(f"serve: {_why_not_started(error, settings.data_dir)}", file=sys.stderr)
            return 2
    elif args.command == "rebuild-model":
        return _rebuild_model(args)
    elif args.command == "export-log":
        return _export_log(args)
    elif args.command == "demo":
        from training.demo import run_demo

        run_demo(
            events=args.events, data_dir=args.data_dir, seed=args.seed, concurrency=args.concurrency, drift=args.drift,
            embeddings=not args.no_embeddings,
        )
    elif args.command == "import-obd":
        from training.obd import run_import

        try:
            run_import(args.data_dir, source=args.source, cache_dir=args.cache_dir,
                       policies=args.policies.split(","), campaigns=args.campaigns.split(","))
        except (ValueError, OSError, RuntimeError) as error:
            print(f"import-obd: {error}", file=sys.stderr)
            return 2
    elif args.command == "train-embeddings":
        from training.embeddings import run as train_embeddings

        try:
            train_embeddings(args)
        except (InvalidRequest, OSError) as error:
            print(f"train-embeddings: {error}", file=sys.stderr)
            return 2
    elif args.command in ("evaluate", "promote"):
        from training.evaluate import run as run_evaluate
        from training.registry import run_promote

        try:
            return (run_evaluate if args.command == "evaluate" else run_promote)(args)
        except (InvalidRequest, ValueError, OSError) as error:
            print(f"{args.command}: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
