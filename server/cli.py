"""The ``recbandit`` command: serve, rebuild-model, export-log, demo, import-obd, train-embeddings,
evaluate, promote, report.

Built on click from the one settings model (:mod:`server.settings`): every option of every command
is a field there, with its meaning, default, choices and environment variable in ``--help``, and
its value from the flag, the ``RECBANDIT_*`` variable, the ``--config`` TOML file or the default,
in that order. A command that cannot start prints one line on stderr and exits with code 2.

It is the composition root: the one module that imports both ``server`` and ``training``
(``tests/test_boundaries.py``), and wires them — the registry's policy source into ``serve``, a
server and a client into the demo. The offline commands need the training extra and say so in
one line when it is missing.
"""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, get_args, get_origin

import click
from pydantic import BaseModel

from engine.errors import ConfigurationError, InvalidRequest, RecbanditError
from engine.logreader import EVENT_LOG
from server.logs import configure as configure_logs
from server.settings import CONFIG_ENV, ENV_PREFIX, NESTED, ReportOptions, Settings, choices

REBUILD_SETTINGS = ("data_dir", "exploration", "exploration_parameter", "interactions", "learning_rate", "reward_range")
"""The settings ``rebuild-model`` reads: where the log is, and the policy of a model started afresh."""

SERVER_SETTINGS = tuple(name for name, f in Settings.model_fields.items()
                        if not isinstance(f.default, BaseModel) and name != "log_level")
"""The top-level settings: the server's (``serve`` takes every one)."""


# -- options from the settings model ---------------------------------------------------------------


def _option(name: str, field: Any, section: str | None) -> click.Option:
    """The click option of one settings field: ``--min-decisions`` for ``evaluate.min_decisions``.

    Its default is None, so that a flag not given leaves the value to the environment, the config
    file or the model's default (:meth:`Settings.load`); the help says what those are.
    """
    flag = "--" + name.replace("_", "-")
    key = f"{section}{NESTED}{name}" if section else name
    location = (section, name) if section else (name,)
    variable = ENV_PREFIX + NESTED.join(part.upper() for part in location)
    annotation = field.annotation
    arms = set(get_args(annotation)) if get_origin(annotation) is not Literal else {annotation}
    allowed = choices(location)
    details = [] if field.default in (None, "", ()) else [f"default: {field.default}"]
    if allowed:
        details.append("one of: " + ", ".join(allowed))
    details.append(f"env var: {variable}")
    help_text = f"{field.description} [{'; '.join(details)}]"
    if annotation is bool:
        decls = [flag, key] if name.startswith("no_") else [f"{flag}/--no-{name.replace('_', '-')}", key]
        return click.Option(decls, is_flag=True, default=None, help=help_text)
    multiple = get_origin(annotation) is tuple
    kind: Any = click.STRING
    if annotation is int or int in arms:
        kind = click.INT
    elif annotation is float or float in arms:
        kind = click.FLOAT
    elif annotation is Path or Path in arms:
        kind = click.Path(path_type=Path)
    metavar = "|".join(allowed) if allowed else None
    return click.Option([flag, key], type=kind, default=None, multiple=multiple, metavar=metavar, help=help_text)


def _settings_options(names: Iterable[str] = (), section: str | None = None) -> Callable[[Any], Any]:
    """Decorate a command with the options of top-level settings ``names`` and of its ``section``."""
    options = [_option(name, Settings.model_fields[name], None) for name in names]
    if section is not None:
        model = Settings.model_fields[section].annotation
        options += [_option(name, field, section) for name, field in model.model_fields.items()]

    def decorate(command: Any) -> Any:
        command.__click_params__ = [*getattr(command, "__click_params__", []), *reversed(options)]
        return command

    return decorate


def _load(context: click.Context, command: str, flags: dict[str, Any]) -> Settings:
    """The settings of ``command`` from its flags (``section__name`` for its own options) and the
    group's; a bad value ends the command with one line and exit code 2."""
    nested: dict[str, Any] = {"log_level": context.obj["log_level"]}
    for key, value in flags.items():
        if isinstance(value, tuple) and not value:
            value = None  # a repeatable option not given
        section, _, name = key.rpartition(NESTED)
        if section:
            nested.setdefault(section, {})[name] = value
        else:
            nested[name] = value
    try:
        settings = Settings.load(context.obj["config"], **nested)
    except ConfigurationError as error:
        _refuse(command, error)
    configure_logs(settings.log_level, settings.log_format if command == "serve" else "text",
                   access_log=command == "serve" and settings.access_log)
    return settings


def _refuse(command: str, error: Exception | str) -> None:
    print(f"{command}: {error}", file=sys.stderr)
    sys.exit(2)


TRAINING_EXTRA = ("mlflow", "matplotlib", "lightfm", "tqdm")
"""What ``recbandit[training]`` installs: the offline commands need it, serving does not."""


def _training_missing(modules: Iterable[str] = TRAINING_EXTRA) -> str | None:
    """Why ``modules`` of the training extra cannot be imported, or None when they can."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if not missing:
        return None
    return f"needs the training extra ({', '.join(missing)} not installed): install recbandit[training]"


def _needs_training(command: str, modules: Iterable[str] = TRAINING_EXTRA) -> None:
    """End ``command`` with one line when the training extra is not installed."""
    if (missing := _training_missing(modules)) is not None:
        _refuse(command, missing)


def _embeddings_trainer(command: str, settings: Settings) -> Any:
    """LightFM's scheduled trainer (training's, handed to the engine) when --embeddings-retrain-interval is set."""
    if not settings.embeddings_retrain_interval.strip() or settings.role == "serve":
        return None
    _needs_training(f"{command}: --embeddings-retrain-interval")
    from training.embeddings import EmbeddingConfig, ScheduledTraining
    from training.tracking import default_tracking_uri

    return ScheduledTraining(settings.data_dir, EmbeddingConfig(), store=settings.store,
                             tracking_uri=default_tracking_uri(settings.data_dir))


def _namespace(settings: Settings, section: str, **extra: Any) -> SimpleNamespace:
    """A command's options as the attributes its module reads (``args.min_decisions``)."""
    return SimpleNamespace(**getattr(settings, section).model_dump(), **extra)


def _version() -> str:
    try:
        return version("recbandit")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


# -- the commands ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(_version(), "--version", prog_name="recbandit", message="%(prog)s %(version)s")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, envvar=CONFIG_ENV,
              help=f"TOML file of settings: top-level keys for the server, a [command] table for each "
                   f"command's options [env var: {CONFIG_ENV}]")
@click.option("--log-level", type=click.STRING, default=None, metavar="DEBUG|INFO|WARNING|ERROR",
              help=f"the least level logged [default: INFO; env var: {ENV_PREFIX}LOG_LEVEL]")
@click.pass_context
def cli(context: click.Context, config: Path | None, log_level: str | None) -> None:
    """recbandit: a self-hosted decision service for storefronts (gRPC Recommend and Feedback, an
    online contextual bandit, LightFM embeddings, MLflow)."""
    context.obj = {"config": config, "log_level": log_level.upper() if log_level else None}


@cli.command()
@_settings_options(SERVER_SETTINGS)
@click.pass_context
def serve(context: click.Context, **flags: Any) -> None:
    """Serve Recommend, Feedback, the catalog and Admin over gRPC until SIGTERM or SIGINT."""
    from server.app import serve as run_server

    settings = _load(context, "serve", flags)
    try:
        settings.engine_config()  # reads every setting before anything starts
    except (ConfigurationError, ValueError) as error:
        _refuse("serve", error)
    if warning := settings.reward_range_warning():
        logging.getLogger("recbandit.serve").warning(warning)
    policy_source = None
    if settings.policy_registry:  # the registry is MLflow's: training's, handed to the server
        _needs_training("serve: --policy-registry", ("mlflow",))
        from training.registry import RegistryPolicySource

        policy_source = RegistryPolicySource(settings.policy_registry)
    try:
        if settings.processes > 1:
            from server.processes import serve_processes

            serve_processes(settings)  # its learner process re-trains the embeddings, if asked
        else:
            run_server(settings, policy_source, _embeddings_trainer("serve", settings))
    except (RecbanditError, sqlite3.DatabaseError, OSError, ValueError) as error:  # refused at start: one line
        _refuse("serve", _why_not_started(error, settings.data_dir))


@cli.command()
@_settings_options(SERVER_SETTINGS)
@click.pass_context
def learn(context: click.Context, **flags: Any) -> None:
    """Be the store's one learner: join rewards, close windows, learn, publish snapshots that the
    serving processes (serve --role serve) follow. A second learner waits as a standby."""
    from server.processes import learn as run_learner

    settings = _load(context, "learn", flags)
    policy_source = None
    if settings.policy_registry:  # the learner follows the champion; the serving processes follow the learner
        _needs_training("learn: --policy-registry", ("mlflow",))
        from training.registry import RegistryPolicySource

        policy_source = RegistryPolicySource(settings.policy_registry)
    try:
        settings.engine_config()
        run_learner(settings, policy_source, _embeddings_trainer("learn", settings))
    except (RecbanditError, sqlite3.DatabaseError, OSError, ValueError) as error:
        _refuse("learn", _why_not_started(error, settings.data_dir))


@cli.command("rebuild-model")
@_settings_options(REBUILD_SETTINGS)
@click.pass_context
def rebuild_model(context: click.Context, **flags: Any) -> None:
    """Relearn the model from the event log, when its checkpoint cannot be trusted.

    Learns every final outcome in the event log into a fresh model with the checkpoint's policy
    (or, when its manifest is unreadable or of an older example format, the flags') and checkpoints
    it. Stop the server first.
    """
    sys.exit(_rebuild_model(_load(context, "rebuild-model", flags)))


@cli.command("export-log")
@_settings_options(("data_dir", "store"), "export_log")
@click.pass_context
def export_log(context: click.Context, **flags: Any) -> None:
    """Write the joined event log as JSON Lines or Parquet."""
    sys.exit(_export_log(_load(context, "export-log", flags)))


@cli.command("campaign-report")
@_settings_options(("data_dir", "store"), "campaign_report")
@click.pass_context
def campaign_report(context: click.Context, **flags: Any) -> None:
    """Did it pay? Per arm, channel and surface: impressions, CTR, conversion, revenue per 1,000
    impressions, and recbandit's uplift over the control arm (--control-share) with 95% intervals."""
    sys.exit(_campaign_report(_load(context, "campaign-report", flags)))


@cli.command()
@_settings_options((), "demo")
@click.pass_context
def demo(context: click.Context, **flags: Any) -> None:
    """Run a simulated storefront against a fresh server on embedded defaults."""
    _needs_training("demo")
    from server.app import start
    from server.client import RecbanditClient
    from training.demo import run_demo

    options = _load(context, "demo", flags).demo
    run_demo(events=options.events, data_dir=options.data_dir, seed=options.seed, concurrency=options.concurrency,
             drift=options.drift, embeddings=not options.no_embeddings,
             serve=lambda **settings: start(Settings(**settings)), connect=RecbanditClient)


@cli.command("import-obd")
@_settings_options((), "import_obd")
@click.pass_context
def import_obd(context: click.Context, **flags: Any) -> None:
    """Import the Open Bandit Dataset sample into an event log."""
    _needs_training("import-obd")
    from training.obd import run_import

    options = _load(context, "import-obd", flags).import_obd
    try:
        run_import(options.data_dir, source=options.source, cache_dir=options.cache_dir,
                   policies=options.policies.split(","), campaigns=options.campaigns.split(","),
                   progress=not options.no_progress)
    except (ValueError, OSError, RuntimeError) as error:
        _refuse("import-obd", error)


@cli.command("train-embeddings")
@_settings_options(("data_dir",), "train_embeddings")
@click.pass_context
def train_embeddings(context: click.Context, **flags: Any) -> None:
    """Train LightFM embeddings from the event log and write an artifact the server loads."""
    _needs_training("train-embeddings")
    from training.embeddings import run

    settings = _load(context, "train-embeddings", flags)
    args = _namespace(settings, "train_embeddings", data_dir=settings.data_dir)
    args.label_weight = list(args.label_weight) or None
    try:
        run(args)
    except (InvalidRequest, ConfigurationError, OSError) as error:
        _refuse("train-embeddings", error)


@cli.command()
@_settings_options(("data_dir",), "evaluate")
@click.pass_context
def evaluate(context: click.Context, **flags: Any) -> None:
    """Replay candidate policies on the log, estimate their value off-policy, track them in MLflow,
    register the best."""
    _needs_training("evaluate")
    from training.evaluate import run

    settings = _load(context, "evaluate", flags)
    try:
        sys.exit(run(_namespace(settings, "evaluate", data_dir=Path(settings.data_dir))))
    except (InvalidRequest, ConfigurationError, ValueError, OSError) as error:
        _refuse("evaluate", error)


@cli.command()
@_settings_options(("data_dir",), "promote")
@click.pass_context
def promote(context: click.Context, **flags: Any) -> None:
    """Move the champion alias to a registered policy version (after comparing it on the log)."""
    _needs_training("promote")
    from training.registry import run_promote

    settings = _load(context, "promote", flags)
    if settings.promote.version is None:
        _refuse("promote", ConfigurationError("version", "is required: the recbandit-policy version to promote"))
    try:
        sys.exit(run_promote(_namespace(settings, "promote", data_dir=Path(settings.data_dir))))
    except (InvalidRequest, ConfigurationError, ValueError, OSError) as error:
        _refuse("promote", error)


@cli.command()
@_settings_options((), "report")
@click.pass_context
def report(context: click.Context, **flags: Any) -> None:
    """Ask a running server whether it is learning; print the report and write it as a PNG."""
    sys.exit(_report(_load(context, "report", flags).report))


# -- what the commands do -------------------------------------------------------------------------


def _rebuild_model(settings: Settings) -> int:
    from engine.rebuild import rebuild_model

    try:
        config = settings.engine_config()
    except (ConfigurationError, ValueError) as error:
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


def _export_log(settings: Settings) -> int:
    from engine.export import export_jsonl, export_parquet
    from engine.logreader import LogReader

    args = settings.export_log
    if args.out is None:
        print("export-log: --out is required: the .jsonl or .parquet file to write", file=sys.stderr)
        return 2
    database = Path(settings.data_dir) / EVENT_LOG
    if not settings.store and not database.exists():
        print(f"export-log: no event log at {database}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.resolve().parent == database.resolve().parent and out.suffix not in (".jsonl", ".parquet"):
        print(f"export-log: --out {out} would overwrite a file of the data directory; "
              "name the export *.jsonl or *.parquet", file=sys.stderr)
        return 2
    fmt = args.format or ("parquet" if out.suffix == ".parquet" else "jsonl")
    try:
        with LogReader.open(settings.store or database) as reader:
            count = (export_parquet if fmt == "parquet" else export_jsonl)(reader, out)
    except (RecbanditError, sqlite3.DatabaseError, OSError, ValueError) as error:
        print(f"export-log: {_why_not_started(error, settings.data_dir)}", file=sys.stderr)
        return 2
    print(f"wrote {count} {'slot rows' if fmt == 'parquet' else 'events'} to {out}")
    return 0


def _campaign_report(settings: Settings) -> int:
    """Read the log (never write it), print the campaign's table and draw it; 2 when refused."""
    import time

    from engine.campaign import campaign_report
    from engine.logreader import LogReader

    options = settings.campaign_report
    if not 0 <= options.resamples <= 10_000:
        print(f"campaign-report: --resamples must be within [0, 10000], got {options.resamples}", file=sys.stderr)
        return 2
    try:
        with LogReader.open(settings.store or Path(settings.data_dir)) as reader:
            report = campaign_report(
                reader.history(), closed_by=time.time(), resamples=options.resamples,
                click_labels=[x.strip() for x in options.click_labels.split(",") if x.strip()],
                purchase_labels=[x.strip() for x in options.purchase_labels.split(",") if x.strip()],
                channel_feature=options.channel_feature, surface_feature=options.surface_feature)
    except (RecbanditError, sqlite3.DatabaseError, OSError, ValueError) as error:
        print(f"campaign-report: {_why_not_started(error, settings.data_dir)}", file=sys.stderr)
        return 2
    from training.campaign import format_campaign, plot_campaign

    return _print_and_plot("campaign-report", format_campaign(report), lambda: plot_campaign(report, options.out),
                           options.out)


def _print_and_plot(command: str, table: str, plot: Callable[[], None], out: Path) -> int:
    """Print a report's table, then draw its PNG (2 when matplotlib, of the training extra, is missing)."""
    print(table)
    if (missing := _training_missing(("matplotlib",))) is not None:
        print(f"{command}: not writing {out}: the plot {missing}", file=sys.stderr)
        return 2
    plot()
    print(f"wrote {out}")
    return 0


def _report(options: ReportOptions) -> int:
    """Fetch the report through the client, print it and draw it (:mod:`training.report`); 2 when
    the server or the options refuse."""
    from engine.rewards import parse_duration
    from server.client import RecbanditCallError, RecbanditClient, Tls
    from training.report import format_report, plot_report

    try:
        window = parse_duration(options.window)
        token = options.token_file.read_text().strip() if options.token_file is not None else None
        tls = Tls.from_files(options.tls_ca) if options.tls_ca is not None else None
    except ConfigurationError as error:
        print(f"report: --window: {error.reason}", file=sys.stderr)
        return 2
    except OSError as error:  # an unreadable token or CA file
        print(f"report: {error}", file=sys.stderr)
        return 2
    try:
        with RecbanditClient(options.target, token=token, tls=tls) as client:
            learning = client.learning_report(window_seconds=window, max_decisions=options.max_decisions)
    except RecbanditCallError as error:
        print(f"report: {error.code().name}: {error.details()}", file=sys.stderr)
        return 2
    return _print_and_plot("report", format_report(learning), lambda: plot_report(learning, options.out), options.out)


def _why_not_started(error: Exception, data_dir: str) -> str:
    """One line for a refused start: the error's own message, or what a damaged event log means."""
    if isinstance(error, sqlite3.OperationalError):
        return f"the event log {Path(data_dir) / EVENT_LOG} cannot be used ({error})"
    if isinstance(error, sqlite3.DatabaseError):
        return f"the event log {Path(data_dir) / EVENT_LOG} is not a readable SQLite database ({error})"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return its exit code (``recbandit`` and ``python -m server.cli``)."""
    try:
        cli.main(args=argv, prog_name="recbandit", standalone_mode=False)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except click.exceptions.Abort:
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
