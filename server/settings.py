"""Every setting of every ``recbandit`` command, in one pydantic-settings model.

Values come, highest first, from command-line flags, ``RECBANDIT_*`` environment variables, an
optional TOML config file (``--config FILE`` or ``RECBANDIT_CONFIG``), and the defaults here:

.. code-block:: toml

    # recbandit.toml: the server's settings at the top level ...
    port = 50051
    data_dir = "/var/lib/recbandit"
    exploration = "squarecb"

    # ... and each command's own options in its table
    [evaluate]
    min_decisions = 500

The environment variable of a top-level setting is ``RECBANDIT_<NAME>`` (``RECBANDIT_PORT``); of
a command's option ``RECBANDIT_<COMMAND>__<NAME>`` (``RECBANDIT_EVALUATE__MIN_DECISIONS``).

Configuration enters here and only here; the engine receives a frozen :class:`EngineConfig`.
Every number is checked against the range where it means something before anything starts
(:meth:`Settings.engine_config` and :mod:`server.transport`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from engine.apprentice import ApprenticeConfig
from engine.bandit import BanditConfig
from engine.coldstart import ColdStartConfig
from engine.core import EngineConfig
from engine.errors import ConfigurationError
from engine.privacy import read_key
from engine.rewards import Aggregation, RewardRules, parse_duration
from engine.rules import load_rules
from engine.storage import is_postgres
from engine.validation import Limits

ENV_PREFIX = "RECBANDIT_"
NESTED = "__"
CONFIG_ENV = "RECBANDIT_CONFIG"
"""The environment variable naming the TOML config file (the ``--config`` flag wins over it)."""

MAX_RETENTION_SECONDS = 100 * 365 * 86_400.0
MAX_PROCESSES = 64

_outside: ContextVar[tuple[Path | None] | None] = ContextVar("recbandit_settings_outside", default=None)
"""Set by :meth:`Settings.load` to the config file (or None): only then are the environment and
the file read; ``Settings(...)`` built in code holds what it is given and the defaults."""


class _Options(BaseModel):
    """A command's own options: a table of the config file, ``RECBANDIT_<COMMAND>__<NAME>`` variables."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ExportLogOptions(_Options):
    out: Path | None = Field(None, description="the file to write; required")
    format: Literal["jsonl", "parquet"] | None = Field(None, description="default: by the suffix of --out")


class CampaignReportOptions(_Options):
    out: Path = Field(Path("campaign.png"), description="the PNG to write")
    resamples: int = Field(1000, description="bootstrap resamples of users for the uplift intervals")
    click_labels: str = Field("click", description="reward labels that count as clicks, comma-separated")
    purchase_labels: str = Field("purchase", description="reward labels that count as purchases (their value is "
                                                         "revenue), comma-separated")
    channel_feature: str = Field("channel", description="the context feature that names the channel")
    surface_feature: str = Field("surface", description="the context feature that names the surface")


class DemoOptions(_Options):
    events: int = Field(20_000, description="simulated visits to serve")
    data_dir: Path | None = Field(None, description="the demo's data directory; default: a new temporary folder")
    seed: int = Field(7, description="the simulated world's seed")
    concurrency: int = Field(4, description="Recommend calls in flight at once")
    drift: bool = Field(False, description="the segments' tastes change at 60% of the run")
    no_embeddings: bool = Field(False, description="do not train LightFM embeddings halfway")


class ImportObdOptions(_Options):
    data_dir: Path = Field(Path("recbandit-obd"), description="where the imported event log is written")
    source: Path | None = Field(None, description="the obp sdist or an extracted copy; default: download it")
    cache_dir: Path | None = Field(None, description="where the download is kept; default: DATA_DIR/cache")
    policies: str = Field("random,bts", description="logging policies to import, comma-separated: random, bts")
    campaigns: str = Field("all,men,women", description="campaigns to import, comma-separated: all, men, women")
    no_progress: bool = Field(False, description="no progress bar on stderr (there is one only on a terminal)")


class TrainEmbeddingsOptions(_Options):
    events: Path | None = Field(None, description="a JSONL export (or another data directory) to read instead of events.db")
    interactions: Path | None = Field(None, description="CSV user_id,item_id,weight[,timestamp] to merge")
    loss: Literal["warp", "bpr", "logistic", "warp-kos"] = Field("warp", description="LightFM's loss")
    components: int = Field(32, description="the embeddings' dimension")
    epochs: int = Field(30, description="passes over the interactions")
    learning_rate: float = Field(0.05, description="LightFM's learning rate")
    item_alpha: float = Field(0.0, description="L2 penalty on item features")
    user_alpha: float = Field(0.0, description="L2 penalty on user features")
    max_sampled: int = Field(10, description="negatives sampled per positive (warp)")
    threads: int = Field(1, description="training threads; above 1 is faster but not reproducible")
    seed: int = Field(0, description="seed of the split and the model")
    test_fraction: float = Field(0.2, description="share of the interactions held out to evaluate")
    k: int = Field(10, description="precision and recall at k")
    eval_every: int = Field(0, description="evaluate every so many epochs (0: after the last only)")
    default_weight: float = Field(1.0, description="weight of a reward label without --label-weight")
    label_weight: tuple[str, ...] = Field((), description="LABEL=WEIGHT, repeated; default purchase=5.0 "
                                                          "add_to_cart=2.0 click=1.0")
    no_refit: bool = Field(False, description="keep the holdout model instead of refitting on all data")
    no_progress: bool = Field(False, description="no progress bar on stderr")
    tracking_uri: str | None = Field(None, description="MLflow store; default: $MLFLOW_TRACKING_URI, "
                                                       "else sqlite:///DATA_DIR/mlflow.db")
    no_track: bool = Field(False, description="do not record the run in MLflow")


class EvaluateOptions(_Options):
    log: Path | None = Field(None, description="evaluate an exported .jsonl/.parquet log instead of DATA_DIR's")
    tracking_uri: str | None = Field(None, description="MLflow store; default: $MLFLOW_TRACKING_URI, "
                                                       "else sqlite:///DATA_DIR/mlflow.db")
    candidates: Path | None = Field(None, description='JSON list of policies, e.g. '
                                                      '[{"exploration": "epsilon", "cb_type": "ips"}]')
    estimator: Literal["ips", "snips", "dm", "dr", "sndr"] = Field("dr", description="the estimator that ranks and promotes")
    clip: float | None = Field(None, description="clip importance weights at this value")
    resamples: int = Field(1000, description="bootstrap resamples of the confidence intervals")
    seed: int = Field(0, description="seed of the bootstrap and the replays")
    no_register: bool = Field(False, description="track the runs but register nothing")
    min_decisions: int = Field(100, description="register nothing from a log with fewer decisions with a final reward")
    min_ess: float = Field(30.0, description="register nothing when the best candidate's effective sample size is lower")
    no_progress: bool = Field(False, description="no progress bar on stderr")


class PromoteOptions(_Options):
    version: str | None = Field(None, description="the recbandit-policy version to promote; required")
    force: bool = Field(False, description="move the champion alias without comparing")
    log: Path | None = Field(None, description="compare on an exported .jsonl/.parquet log instead of DATA_DIR's")
    tracking_uri: str | None = Field(None, description="MLflow store; default: $MLFLOW_TRACKING_URI, "
                                                       "else sqlite:///DATA_DIR/mlflow.db")
    estimator: Literal["ips", "snips", "dm", "dr", "sndr"] = Field("dr", description="the estimator compared")


class ReportOptions(_Options):
    target: str = Field("127.0.0.1:50051", description="the server, HOST:PORT")
    token_file: Path | None = Field(None, description="a file holding an admin token")
    tls_ca: Path | None = Field(None, description="the CA certificate (PEM) the server's certificate is checked "
                                                  "against; unset: plaintext")
    window: str = Field("1d", description="how far back the report looks: 90, 45s, 10m, 2h, 7d (at most 90d)")
    max_decisions: int = Field(0, description="at most this many of the newest decisions; 0: the server's default")
    out: Path = Field(Path("report.png"), description="the PNG to write")


class Settings(BaseSettings):
    """The server's settings at the top level; each command's own options in its table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED, frozen=True,
                                      extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="address to listen on; not a loopback address: "
                                               "only with TLS or --allow-insecure")
    port: int = Field(50051, description="gRPC port; 0 picks a free one")
    data_dir: str = Field("recbandit-data", description="the event log, checkpoints and embeddings")
    exploration: Literal["epsilon", "softmax", "squarecb", "regcbopt", "cover", "bag"] = Field(
        "squarecb", description="how the bandit explores")
    exploration_parameter: float | None = Field(None, description="epsilon, lambda, gamma_scale, mellowness, "
                                                                  "policies or bags (by --exploration); unset: VW's")
    interactions: str = Field("", description="VW quadratic interactions of namespaces U(ser), C(ontext), "
                                              "T(ime), P(ortrait), I(tem), K(ey: the item id), comma-separated; "
                                              "empty: UI,CI, and PI with --portraits on")
    portraits: Literal["on", "off"] = Field("on", description="each decision sees the user's portrait (interests, "
                                                              "RFM, visits) in VW's Portrait namespace")
    portrait_interests: str = Field("category,brand,tags", description="the item features (categorical, or lists "
                                                                       "of tags) whose rewarded values make a "
                                                                       "user's interests, comma-separated")
    learning_rate: float = Field(0.5, description="VW's learning rate")
    reward_window: str = Field("10m", description="how long after a decision its rewards count (30s, 10m, 2h, 7d)")
    default_reward: float = Field(0.0, description="learned for a slot whose window closes without Feedback")
    reward_aggregation: Literal["earliest", "sum"] = Field("earliest", description="the first reward counts, or "
                                                                                   "the rewards within the window add up")
    min_reward: float = Field(-1e6, description="the least reward Feedback accepts")
    max_reward: float = Field(1e6, description="the largest reward Feedback accepts")
    reward_range: str = Field("0,1", description="LOW,HIGH: the rewards regcbopt assumes")
    retention: str = Field("", description="delete events decided longer ago than this (30d, 12h, …) once "
                                           "every slot is final and learned; empty: keep every event")
    store: str = Field("", description="postgresql://user@host:port/db: keep the event log and catalog in "
                                       "PostgreSQL; empty: events.db in the data directory")
    role: Literal["all", "serve"] = Field("all", description="all: serve and learn in this process; serve: decide "
                                                            "and log, following the snapshots of the store's learner "
                                                            "(recbandit learn)")
    processes: int = Field(1, description="serving processes on this machine, on one port (SO_REUSEPORT), plus one "
                                          "learner process; 1: this process serves and learns")
    model_poll_interval: float = Field(1.0, description="role serve: seconds between looks for the learner's newest "
                                                        "snapshot and for catalog writes")
    archive_dir: str = Field("", description="with --retention: first write what it deletes to day-partitioned "
                                             "Parquet files in this folder, which every reader of the log reads too")
    rules: str = Field("", description="TOML file of business rules: eligibility, frequency caps, promotion "
                                        "shares, pinned items; re-read within a second of a change (a file "
                                        "that does not load keeps the rules in force); empty: none")
    max_candidates: int = Field(500, description="candidates a Recommend may send")
    seed: int = Field(0, description="seed of the exploration draws")
    checkpoint_interval: float = Field(60.0, description="seconds between checkpoints of the model")
    workers: int = Field(16, description="threads for blocking work (catalog writes, checkpoints)")
    grace: float = Field(5.0, description="seconds calls in flight may finish at shutdown")
    reflection: bool = Field(True, description="serve gRPC reflection (grpcurl, grpcui)")
    retrieval_top_n: int = Field(100, description="candidates the embeddings retrieve when a Recommend sends none")
    cold_start_candidates: str = Field("20,10,20", description="POPULAR,NEWEST,EXPLORE: the candidate set of a "
                                                               "Recommend without candidates that no embeddings rank, "
                                                               "when the catalog exceeds --max-candidates")
    cold_start_half_life: str = Field("1d", description="how fast the popular slice forgets a reward (a duration)")
    control_share: float = Field(0.0, description="share of users (by a stable hash of the user id) served the "
                                                   "storefront's own order, as a control arm: 0 to below 1")
    campaign: str = Field("", description="the campaign's name: a new one draws its control users anew")
    mode: Literal["online", "apprentice"] = Field("online", description="apprentice: serve the storefront's order "
                                                  "(the first candidate a slot may hold) while the model learns; "
                                                  "the store's mode wins once one was recorded")
    apprentice_exploration: float = Field(0.0, description="apprentice mode: the share of each slot drawn uniformly "
                                                           "over its candidates (0 to below 1)")
    apprentice_until: float = Field(0.0, description="apprentice mode: switch to online once the model's choice "
                                                     "matches the baseline this often over --apprentice-window "
                                                     "learned slots (above 0, at most 1); 0: only Admin/SetServingMode")
    apprentice_window: int = Field(1000, description="apprentice mode: the newest learned slots the match rate and "
                                                     "rewards are over, and the switch waits for")
    embeddings_retrain_interval: str = Field("", description="the learner re-trains the LightFM embeddings from the "
                                                             "store this often (a duration, e.g. 6h; needs the "
                                                             "training extra); empty: never")
    embeddings_retrain_min_interactions: int = Field(1000, description="new positive rewards a scheduled "
                                                                       "re-training needs")
    embeddings_poll_interval: float = Field(5.0, description="seconds between looks for new embeddings (0: never)")
    policy_registry: str = Field("", description="MLflow tracking URI whose champion policy is served; empty: none")
    policy_poll_interval: float = Field(30.0, description="seconds between looks for a new champion "
                                                          "(0 or less: only on ReloadPolicy)")
    tls_cert: str = Field("", description="PEM certificate chain to serve TLS with (with --tls-key)")
    tls_key: str = Field("", description="PEM private key of --tls-cert")
    tls_client_ca: str = Field("", description="PEM CA certificates; set: clients must present a certificate (mTLS)")
    allow_insecure: bool = Field(False, description="serve plaintext on an address that is not loopback")
    auth_tokens: str = Field("", description="file of 'ROLE TOKEN' lines (storefront, catalog, admin); "
                                             "empty: no tokens; SIGHUP re-reads it")
    max_in_flight: int = Field(256, description="calls served at once; more get RESOURCE_EXHAUSTED")
    max_request_bytes: int = Field(1 << 20, description="the largest request message, in bytes")
    pseudonymize_user_ids: str = Field("", description="file of a secret key (32+ bytes); set: user ids are "
                                                       "logged as keyed hashes")
    reuse_port: bool = Field(False, description="let several servers bind the same port (SO_REUSEPORT)")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text or as JSON objects")
    access_log: bool = Field(True, description="one log line per RPC: method, status, duration, event id")
    metrics_port: int = Field(0, description="serve Prometheus metrics on this port; 0: off")
    reward_labels: str = Field("", description="the Feedback labels that get metrics series of their own, "
                                                "comma-separated (others count as 'other'); empty: the first 32 seen")
    metrics_host: str = Field("127.0.0.1", description="address of the metrics endpoint (it has no authentication)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="the least level logged")

    export_log: ExportLogOptions = ExportLogOptions()
    campaign_report: CampaignReportOptions = CampaignReportOptions()
    demo: DemoOptions = DemoOptions()
    import_obd: ImportObdOptions = ImportObdOptions()
    train_embeddings: TrainEmbeddingsOptions = TrainEmbeddingsOptions()
    evaluate: EvaluateOptions = EvaluateOptions()
    promote: PromoteOptions = PromoteOptions()
    report: ReportOptions = ReportOptions()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (the constructor's arguments), then the environment, then the config file, in
        :meth:`load`; the constructor's arguments alone otherwise."""
        outside = _outside.get()
        if outside is None:
            return (init_settings,)
        (config_file,) = outside
        if config_file is None:
            return init_settings, env_settings
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **flags: Any) -> Settings:
        """Flags that are not None, over ``RECBANDIT_*`` variables, over ``config_file`` (or the file
        ``RECBANDIT_CONFIG`` names), over the defaults. A command's flags go in a dict under its name.

        Raises :class:`ConfigurationError` naming the setting, where it can be set, and the rule.
        """
        path = config_file or os.environ.get(CONFIG_ENV) or None
        if path is not None and not Path(path).is_file():
            raise ConfigurationError("config", f"{path} is not a file")
        token = _outside.set((Path(path) if path else None,))
        try:
            return cls(**_without_none(flags))
        except ValidationError as error:
            raise _invalid(error) from None
        except SettingsError as error:  # a RECBANDIT_<COMMAND> variable that is not JSON, …
            raise ConfigurationError("environment", f"{str(error)[:200]}: a command's table in a {ENV_PREFIX}<COMMAND> "
                                                    f"variable must be JSON; or set {ENV_PREFIX}<COMMAND>{NESTED}<NAME>") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigurationError("config", f"{path} cannot be read as TOML ({error})") from None
        except RecursionError:  # arrays or JSON nested thousands deep
            raise ConfigurationError("config", "a value is nested too deep (in the config file or a RECBANDIT_* "
                                               "variable)") from None
        finally:
            _outside.reset(token)

    def engine_config(self) -> EngineConfig:
        self._check_ranges()
        reward_range = _reward_range(self.reward_range)
        low, high = reward_range
        if self.exploration == "regcbopt" and not low <= self.default_reward <= high:
            raise ConfigurationError(
                "default_reward", f"{self.default_reward:g} lies outside reward_range [{low:g}, {high:g}], "
                "the range regcbopt assumes; change one of the two settings"
            )
        return EngineConfig(
            data_dir=Path(self.data_dir),
            bandit=BanditConfig(
                exploration=self.exploration,
                exploration_parameter=self.exploration_parameter,
                interactions=self._interactions(),
                learning_rate=self.learning_rate,
                reward_range=reward_range,
            ),
            rewards=RewardRules(
                window_seconds=parse_duration(self.reward_window),
                default_reward=self.default_reward,
                aggregation=_aggregation(self.reward_aggregation),
            ),
            limits=dataclasses.replace(
                Limits(), min_reward=self.min_reward, max_reward=self.max_reward, max_candidates=self.max_candidates
            ),
            seed=self.seed,
            checkpoint_interval=self.checkpoint_interval,
            retrieval_top_n=self.retrieval_top_n,
            cold_start=_cold_start(self.cold_start_candidates, self.cold_start_half_life, self.max_candidates),
            embeddings_retrain_interval=_retrain_interval(self.embeddings_retrain_interval),
            control_share=self.control_share,
            campaign=self.campaign,
            embeddings_retrain_min_interactions=self.embeddings_retrain_min_interactions,
            embeddings_poll_interval=self.embeddings_poll_interval,
            user_id_key=read_key(self.pseudonymize_user_ids) if self.pseudonymize_user_ids else None,
            retention_seconds=_retention(self.retention),
            archive_dir=Path(self.archive_dir) if self.archive_dir.strip() else None,
            store=_store(self.store),
            role=self.role,
            model_poll_interval=self.model_poll_interval,
            rules_file=_rules_file(self.rules),
            portraits=self.portraits == "on",
            apprentice=self._apprentice(),
            portrait_interests=tuple(n.strip() for n in self.portrait_interests.split(",") if n.strip()),
        )

    def _apprentice(self) -> ApprenticeConfig:
        if self.apprentice_until < 0:
            raise ConfigurationError("apprentice_until", f"must be above 0 and at most 1 (0: none), got {self.apprentice_until:g}")
        config = ApprenticeConfig(self.mode, self.apprentice_exploration, self.apprentice_until or None,
                                  self.apprentice_window)
        config.validate()
        return config

    def _interactions(self) -> tuple[str, ...]:
        """The ``-q`` pairs: as set, or :class:`~engine.bandit.BanditConfig`'s, whose portrait × item
        (``PI``) is left out with portraits off."""
        pairs = tuple(p.strip() for p in self.interactions.split(",") if p.strip())
        default = BanditConfig().interactions
        return pairs or (default if self.portraits == "on" else tuple(p for p in default if "P" not in p))

    def _check_ranges(self) -> None:
        """Every number within the range where it means something; a data directory named."""
        if not self.data_dir.strip():
            raise ConfigurationError("data_dir", "must name a directory")
        at_least = {"max_candidates": 1, "retrieval_top_n": 1, "workers": 1, "grace": 0.0,
                    "embeddings_retrain_min_interactions": 1,
                    "embeddings_poll_interval": 0.0, "processes": 1, "model_poll_interval": 0.05}
        for name, low in at_least.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= low):
                raise ConfigurationError(name, f"must be at least {low:g}, got {value:g}")
        if not (math.isfinite(self.control_share) and 0.0 <= self.control_share < 1.0):
            raise ConfigurationError("control_share", f"must be at least 0 and below 1, got {self.control_share:g}")
        if len(self.campaign) > 128:
            raise ConfigurationError("campaign", "must be at most 128 characters")
        if self.processes > MAX_PROCESSES:
            raise ConfigurationError("processes", f"must be at most {MAX_PROCESSES}, got {self.processes}")
        if self.role == "serve" and self.policy_registry:
            raise ConfigurationError("policy_registry", "a serving process follows the learner's model: give the "
                                                        "registry to recbandit learn")
        if self.processes > 1 and self.role != "all":
            raise ConfigurationError("processes", "starts serving processes and a learner itself: leave --role at all")
        if not (math.isfinite(self.checkpoint_interval) and self.checkpoint_interval > 0):
            raise ConfigurationError("checkpoint_interval", f"must be a number of seconds above 0, got {self.checkpoint_interval:g}")
        if not math.isfinite(self.policy_poll_interval):
            raise ConfigurationError("policy_poll_interval", f"must be finite (0 or less: only on ReloadPolicy), got {self.policy_poll_interval:g}")
        if not (math.isfinite(self.min_reward) and math.isfinite(self.max_reward) and self.min_reward < self.max_reward):
            raise ConfigurationError("min_reward", f"min_reward and max_reward must be finite with min_reward < max_reward, "
                                     f"got {self.min_reward:g} and {self.max_reward:g}")

    def reward_range_warning(self) -> str | None:
        """Why regcbopt may see rewards outside ``reward_range``, or None.

        Feedback accepts ``[min_reward, max_reward]`` and the learner is given what was reported,
        never a clipped value; with ``sum`` the learned reward is a sum of reported rewards.
        """
        if self.exploration != "regcbopt":
            return None
        low, high = _reward_range(self.reward_range)
        reasons = []
        if self.min_reward < low or self.max_reward > high:
            reasons.append(f"Feedback accepts [{self.min_reward:g}, {self.max_reward:g}] (min_reward, max_reward)")
        if self.reward_aggregation == Aggregation.SUM.value:
            reasons.append("reward_aggregation=sum learns the sum of a slot's rewards")
        if not reasons:
            return None
        return (f"regcbopt assumes rewards within reward_range [{low:g}, {high:g}], but {' and '.join(reasons)}; "
                "rewards outside it are learned as reported, not clipped, against regcb's assumption")


def _aggregation(value: str) -> Aggregation:
    try:
        return Aggregation(value)
    except ValueError:
        choices = ", ".join(a.value for a in Aggregation)
        raise ConfigurationError("reward_aggregation", f"must be one of {choices}, got {value!r}") from None


def _store(text: str) -> str:
    """``--store``: a PostgreSQL URL, or empty for the data directory's SQLite file."""
    store = text.strip()
    if store and not is_postgres(store):
        raise ConfigurationError("store", "must be a postgresql://user@host:port/db URL (empty: events.db in the "
                                          "data directory)")
    return store


def _cold_start(slices: str, half_life: str, max_candidates: int) -> ColdStartConfig:
    parts = [p.strip() for p in slices.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ConfigurationError("cold_start_candidates", f"must be POPULAR,NEWEST,EXPLORE (three counts), got {slices!r}")
    popular, newest, explore = map(int, parts)
    try:
        seconds = parse_duration(half_life)
    except ConfigurationError:
        raise ConfigurationError("cold_start_half_life", f"not a duration like 12h or 7d: {half_life!r}") from None
    config = ColdStartConfig(popular, newest, explore, half_life_seconds=seconds)
    config.validate()
    if config.size > max_candidates:
        raise ConfigurationError("cold_start_candidates", f"the slices hold {config.size} items, more than "
                                                          f"max_candidates {max_candidates}")
    return config


def _retrain_interval(text: str) -> float:
    if not text.strip():
        return 0.0
    try:
        seconds = parse_duration(text.strip())
    except ConfigurationError:
        raise ConfigurationError("embeddings_retrain_interval", f"not a duration like 30m, 6h or 1d: {text!r}") from None
    if seconds <= 0:
        raise ConfigurationError("embeddings_retrain_interval", f"must be above 0 (empty: never), got {text!r}")
    return seconds


def _rules_file(text: str) -> Path | None:
    """``--rules``: a rules file that loads (read here too, so that a bad one is refused before
    anything starts), or empty for none."""
    if not text.strip():
        return None
    path = Path(text.strip())
    load_rules(path)
    return path


def _retention(text: str) -> float | None:
    """``--retention``: a duration above 0, or empty for none."""
    if not text.strip():
        return None
    try:
        seconds = parse_duration(text)
    except ConfigurationError as error:
        raise ConfigurationError("retention", error.reason) from None
    if not 0 < seconds <= MAX_RETENTION_SECONDS:
        raise ConfigurationError("retention", f"must be above 0 and at most 100 years, got {text!r}")
    return seconds


def _reward_range(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"``: two finite numbers with LOW < HIGH."""
    error = ConfigurationError("reward_range", f"must be LOW,HIGH: two finite numbers with LOW < HIGH, got {text!r}")
    try:
        low, high = map(float, text.split(","))
    except ValueError:  # not two parts, or not numbers
        raise error from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise error
    return low, high


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    """Flags not given are None: leave them to the lower sources (nested command tables too)."""
    kept: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            value = _without_none(value)
            if not value:
                continue
        if value is not None:
            kept[name] = value
    return kept


def setting_sources(location: tuple[str | int, ...]) -> str:
    """Where a setting is set: ``--min-decisions, RECBANDIT_EVALUATE__MIN_DECISIONS or [evaluate]
    min_decisions in the config file``."""
    names = [str(part) for part in location]
    flag = "--" + names[-1].replace("_", "-")
    variable = ENV_PREFIX + NESTED.join(n.upper() for n in names)
    in_file = f"[{names[0]}] {names[-1]}" if len(names) > 1 else names[0]
    return f"{flag}, {variable} or {in_file} in the config file"


def _invalid(error: ValidationError) -> ConfigurationError:
    """The first problem of a ValidationError as one line: the setting, where it is set, the rule."""
    problem = error.errors(include_url=False)[0]
    location = tuple(part for part in problem["loc"] if isinstance(part, str))
    name = ".".join(location) or "settings"
    got = problem.get("input")
    shown = "" if isinstance(got, dict) else f", got {str(got)[:40]!r}"
    if problem["type"] == "extra_forbidden":
        return ConfigurationError(name, "is not a setting (a misspelt name in the config file?)")
    if problem["type"] == "literal_error":
        return ConfigurationError(name, f"must be one of {', '.join(choices(location))}{shown}")
    return ConfigurationError(name, f"{problem['msg'][:160]}{shown} (set by {setting_sources(location)})")


def choices(location: tuple[str, ...]) -> tuple[str, ...]:
    """The values a setting may take (``exploration``, ``evaluate.estimator``, …); empty when any."""
    model: type[BaseModel] = Settings
    for name in location[:-1]:
        model = model.model_fields[name].annotation  # type: ignore[assignment]
    annotation = model.model_fields[location[-1]].annotation
    values: list[str] = []
    arms = (annotation,) if get_origin(annotation) is Literal else get_args(annotation)  # Literal, or X | None
    for arm in arms:
        if get_origin(arm) is Literal:
            values += [str(v) for v in get_args(arm)]
    return tuple(values)
