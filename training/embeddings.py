"""Train LightFM embeddings from the event log: ``recbandit train-embeddings``.

Interactions are the positive rewards of the joined event log, each weighted by its label (a
purchase counts more than a click), optionally merged with an imported CSV
(``user_id,item_id,weight[,timestamp]``). Users carry the features of their latest logged
decision, items their catalog features; both also get an identity feature (``id=<id>``), so a
new user or item is represented by its features alone (see :mod:`engine.embeddings`).

Evaluation is on a time-ordered holdout: the latest ``test_fraction`` of interactions are held
out, the model is fitted on the rest, and precision@k, recall@k and AUC of the model are reported
beside a popularity baseline scored by the same code on the same split. Then, unless ``refit`` is
off, the model is fitted again on every interaction and written as one artifact.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from engine.embeddings import Embeddings, FeatureTable, feature_tokens, identity_token, write_artifact
from engine.errors import InvalidRequest
from engine.records import JoinedEvent
from engine.retraining import TrainedEmbeddings
from engine.types import Features, Item
from training.lineage import DatasetFacts, digest_lines

LOSSES = ("warp", "bpr", "logistic", "warp-kos")
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True, slots=True)
class EmbeddingConfig:
    """LightFM hyper-parameters, label weights and the holdout.

    ``threads`` above 1 trains faster but not reproducibly (LightFM's updates race by design).
    ``eval_every`` evaluates the holdout model every so many epochs (0: after the last only).
    """

    loss: str = "warp"
    components: int = 32
    epochs: int = 30
    learning_rate: float = 0.05
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    max_sampled: int = 10
    threads: int = 1
    seed: int = 0
    label_weights: tuple[tuple[str, float], ...] = (("purchase", 5.0), ("add_to_cart", 2.0), ("click", 1.0))
    default_weight: float = 1.0
    test_fraction: float = 0.2
    k: int = 10
    eval_every: int = 0
    max_eval_users: int = 10_000
    refit: bool = True

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise InvalidRequest("loss", f"must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("components", "epochs", "threads", "k", "max_sampled", "max_eval_users"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequest(name, f"must be a whole number >= 1, got {value!r}")
        if not (isinstance(self.eval_every, int) and self.eval_every >= 0):
            raise InvalidRequest("eval_every", f"must be a whole number >= 0, got {self.eval_every!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidRequest("learning_rate", f"must be > 0, got {self.learning_rate}")
        for name in ("item_alpha", "user_alpha"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InvalidRequest(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.test_fraction < 1:
            raise InvalidRequest("test_fraction", f"must be within [0, 1), got {self.test_fraction}")
        for label, weight in (*self.label_weights, ("", self.default_weight)):
            if not (math.isfinite(weight) and weight >= 0):
                raise InvalidRequest("label_weights", f"{label or 'default'}: must be >= 0, got {weight}")

    def weight(self, label: str) -> float:
        return dict(self.label_weights).get(label, self.default_weight)


@dataclass(frozen=True, slots=True)
class Interaction:
    """A positive signal: ``user_id`` chose ``item_id``, counted ``weight`` times, at ``ts``."""

    user_id: str
    item_id: str
    weight: float
    ts: float = 0.0


@dataclass(frozen=True)
class TrainingData:
    """Interactions, user features and the catalog; ``sources`` says where the interactions came from."""

    interactions: list[Interaction]
    user_features: dict[str, Features] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    sources: tuple[DatasetFacts, ...] = ()


@dataclass(frozen=True)
class TrainingResult:
    embeddings: Embeddings
    metrics: dict[str, float]
    path: Path | None = None


# -- inputs -------------------------------------------------------------------------------------------


def interactions_from_log(events: Iterable[JoinedEvent], config: EmbeddingConfig) -> tuple[list[Interaction], dict[str, Features]]:
    """Positive rewards of joined events (:meth:`engine.logreader.LogReader.history` or a JSONL export).

    Each reward with a value above 0 becomes one interaction weighted by its label; the user's
    features are those of their latest decision.
    """
    interactions: list[Interaction] = []
    user_features: dict[str, tuple[float, Features]] = {}
    for event in events:
        if event.ts >= user_features.get(event.user_id, (-math.inf, {}))[0]:
            user_features[event.user_id] = (event.ts, event.decision.user_features)
        for reward in event.rewards:
            weight = config.weight(reward.label)
            if reward.value > 0 and weight > 0:
                interactions.append(Interaction(event.user_id, reward.item_id, weight, reward.ts))
    return interactions, {u: f for u, (_, f) in user_features.items()}


def read_interactions_csv(path: str | Path) -> list[Interaction]:
    """Read ``user_id,item_id,weight[,timestamp]`` (with that header); rows without a timestamp get 0."""
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"user_id", "item_id", "weight"} - set(reader.fieldnames or ())
        if missing:
            raise InvalidRequest("interactions_csv", f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            where = f"interactions_csv line {line}"
            if not row["user_id"] or not row["item_id"]:
                raise InvalidRequest(where, "user_id and item_id must not be empty")
            try:
                weight = float(row["weight"])
                ts = float(row.get("timestamp") or 0.0)
            except ValueError as err:
                raise InvalidRequest(where, f"weight and timestamp must be numbers ({err})") from None
            if not (math.isfinite(weight) and weight > 0):
                raise InvalidRequest(f"{where} weight", f"must be a finite number > 0, got {row['weight']}")
            out.append(Interaction(row["user_id"], row["item_id"], weight, ts))
    return out


# -- the LightFM dataset ---------------------------------------------------------------------------------


class _Matrices:
    """Ids, feature tokens and the sparse matrices LightFM needs, built with ``lightfm.data.Dataset``."""

    def __init__(self, data: TrainingData) -> None:
        from lightfm.data import Dataset

        items = {i.item_id: i.features for i in data.items}
        user_ids = list(dict.fromkeys([*data.user_features, *(x.user_id for x in data.interactions)]))
        item_ids = list(dict.fromkeys([*items, *(x.item_id for x in data.interactions)]))
        user_rows = [(identity_token(u), feature_tokens(data.user_features.get(u, {}))) for u in user_ids]
        item_rows = [(identity_token(i), feature_tokens(items.get(i, {}))) for i in item_ids]
        self.dataset = Dataset()
        self.dataset.fit(
            users=[u for u, _ in user_rows],
            items=[i for i, _ in item_rows],
            user_features=dict.fromkeys(t for _, tokens in user_rows for t in tokens),
            item_features=dict.fromkeys(t for _, tokens in item_rows for t in tokens),
        )
        self.user_features = self.dataset.build_user_features(user_rows)
        self.item_features = self.dataset.build_item_features(item_rows)
        user_map, user_feature_map, item_map, item_feature_map = self.dataset.mapping()
        self.user_index = {u: user_map[identity_token(u)] for u in user_ids}
        self.item_index = {i: item_map[identity_token(i)] for i in item_ids}
        self.user_tokens = sorted(user_feature_map, key=user_feature_map.__getitem__)
        self.item_tokens = sorted(item_feature_map, key=item_feature_map.__getitem__)
        self.item_ids = item_ids
        self.shape = (len(user_ids), len(item_ids))

    def interactions(self, interactions: Sequence[Interaction]):  # type: ignore[no-untyped-def]
        """One COO matrix of summed weights per (user, item); the same arrays serve as sample weights."""
        import scipy.sparse as sp

        rows = np.fromiter((self.user_index[x.user_id] for x in interactions), np.int32, len(interactions))
        cols = np.fromiter((self.item_index[x.item_id] for x in interactions), np.int32, len(interactions))
        weights = np.fromiter((x.weight for x in interactions), np.float32, len(interactions))
        matrix = sp.coo_matrix((weights, (rows, cols)), shape=self.shape, dtype=np.float32)
        matrix.sum_duplicates()
        return matrix


# -- evaluation ------------------------------------------------------------------------------------------


def ranking_metrics(
    score_rows: Callable[[np.ndarray], np.ndarray], train, test, k: int, users: np.ndarray  # type: ignore[no-untyped-def]
) -> dict[str, float]:
    """Mean precision@k, recall@k and AUC over ``users``, ranking all items but the user's train positives.

    ``score_rows(user_indices) -> (len, n_items)`` gives the scores. For a user with test
    positives ``P`` and negatives ``N`` (items in neither split),
    ``AUC = (#{(p, n): s_p > s_n} + #{s_p = s_n} / 2) / (|P| |N|)``, so ties count half and a
    constant scorer gets 0.5.
    """
    train, test = train.tocsr(), test.tocsr()
    precision, recall, auc = [], [], []
    for start in range(0, len(users), 512):
        batch = users[start : start + 512]
        scores = np.asarray(score_rows(batch), dtype=np.float64)
        for row, u in zip(scores, batch):
            seen = train.indices[train.indptr[u] : train.indptr[u + 1]]
            positives = test.indices[test.indptr[u] : test.indptr[u + 1]]
            row[seen] = -np.inf
            top = np.argpartition(-row, k)[:k] if k < len(row) else np.arange(len(row))
            hits = np.isin(top, positives).sum()
            precision.append(hits / k)
            recall.append(hits / len(positives))
            negative = np.ones(len(row), dtype=bool)
            negative[seen] = negative[positives] = False
            neg = np.sort(row[negative])
            if len(neg):
                below = np.searchsorted(neg, row[positives], "left")
                ties = np.searchsorted(neg, row[positives], "right") - below
                auc.append(float((below + ties / 2).sum()) / (len(positives) * len(neg)))
    return {
        f"precision_at_{k}": float(np.mean(precision)) if precision else 0.0,
        f"recall_at_{k}": float(np.mean(recall)) if recall else 0.0,
        "auc": float(np.mean(auc)) if auc else 0.0,
    }


def _holdout(interactions: Sequence[Interaction], fraction: float) -> tuple[list[Interaction], list[Interaction]]:
    """Split by time: the latest ``fraction`` of interactions are the test set (ties keep input order)."""
    ordered = sorted(interactions, key=lambda x: x.ts)
    cut = len(ordered) - int(round(len(ordered) * fraction))
    return ordered[:cut], ordered[cut:]


# -- training ----------------------------------------------------------------------------------------------


def train_embeddings(
    data: TrainingData,
    config: EmbeddingConfig = EmbeddingConfig(),
    *,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    incumbent: Embeddings | None = None,
) -> TrainingResult:
    """Evaluate on the time-ordered holdout, then (with ``refit``) fit on everything; return the model.

    ``on_epoch(epoch, metrics)`` is called after every epoch of the holdout fit (1-based) with
    ``epoch_seconds``, and with the holdout metrics whenever they are computed.

    ``incumbent`` (the embeddings in use) is compared with the new ones on the holdout
    interactions newer than the incumbent's data (``data_until``), which neither has learned from:
    the holdout model as ``challenger_<metric>``, the incumbent as ``incumbent_<metric>``, when
    there are :data:`MIN_FRESH_INTERACTIONS` of them (:func:`no_worse` judges).
    """
    config.validate()
    if not data.interactions:
        raise InvalidRequest("interactions", "no positive interaction to learn from")
    started = time.perf_counter()
    matrices = _Matrices(data)
    train, test = _holdout(data.interactions, config.test_fraction)
    metrics: dict[str, float] = {"interactions": len(data.interactions), "users": matrices.shape[0],
                                 "items": matrices.shape[1], "train_interactions": len(train),
                                 "test_interactions": len(test)}
    train_m = matrices.interactions(train)
    if test:
        test_m = _unseen(matrices.interactions(test), train_m)
        users = _eval_users(test_m, config)
        metrics["eval_users"] = len(users)
        popularity = np.asarray(train_m.sum(axis=0)).ravel()
        pop = ranking_metrics(lambda b: np.broadcast_to(popularity, (len(b), len(popularity))), train_m, test_m, config.k, users)
        metrics.update({f"popularity_{name}": value for name, value in pop.items()})

        def evaluate(model, test_matrix=test_m, eval_users=users) -> dict[str, float]:  # type: ignore[no-untyped-def]
            ub, uv = model.get_user_representations(matrices.user_features)
            ib, iv = model.get_item_representations(matrices.item_features)
            return ranking_metrics(lambda b: uv[b] @ iv.T + ib + ub[b, None], train_m, test_matrix, config.k, eval_users)

        model = _fit(matrices, train_m, config, "holdout", on_epoch, evaluate, progress)
        metrics.update(evaluate(model))
        if incumbent is not None:
            until = float(incumbent.metadata.get("data_until", 0.0))
            fresh = [x for x in test if x.ts > until]
            metrics["fresh_test_interactions"] = len(fresh)
            if len(fresh) >= MIN_FRESH_INTERACTIONS:
                fresh_m = _unseen(matrices.interactions(fresh), train_m)
                fresh_users = _eval_users(fresh_m, config)
                if len(fresh_users):
                    held = ranking_metrics(_scorer(incumbent, matrices, data), train_m, fresh_m, config.k, fresh_users)
                    metrics.update({f"incumbent_{name}": value for name, value in held.items()})
                    metrics.update({f"challenger_{name}": value
                                    for name, value in evaluate(model, fresh_m, fresh_users).items()})
    if config.refit or not test:
        model = _fit(matrices, matrices.interactions(data.interactions), config, "fit", None, None, progress)
    metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    embeddings = _embeddings(model, matrices, data, config, metrics)
    return TrainingResult(embeddings, metrics)


def _scorer(embeddings: Embeddings, matrices: _Matrices, data: TrainingData) -> Callable[[np.ndarray], np.ndarray]:
    """Scores of trained ``embeddings`` for users by matrix row, over the matrices' items: what the
    holdout ranks them by. Items they hold no representation of rank last."""
    users = sorted(matrices.user_index, key=matrices.user_index.__getitem__)

    def score_rows(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), len(matrices.item_ids)))
        for n, row in enumerate(rows):
            user = users[int(row)]
            scores = embeddings.scores(embeddings.user_representation(user, data.user_features.get(user, {})),
                                       matrices.item_ids)
            out[n] = np.where(np.isnan(scores), -np.inf, scores)
        return out

    return score_rows


def _fit(matrices: _Matrices, interactions, config: EmbeddingConfig, desc: str,  # type: ignore[no-untyped-def]
         on_epoch: EpochCallback | None, evaluate, progress: bool):
    from lightfm import LightFM
    from tqdm import tqdm

    model = LightFM(no_components=config.components, loss=config.loss, learning_rate=config.learning_rate,
                    item_alpha=config.item_alpha, user_alpha=config.user_alpha, max_sampled=config.max_sampled,
                    random_state=np.random.RandomState(config.seed))
    weights = interactions if config.loss != "warp-kos" else None
    bar = tqdm(range(1, config.epochs + 1), desc=f"lightfm {desc}", unit="epoch", disable=not progress)
    for epoch in bar:
        t = time.perf_counter()
        model.fit_partial(interactions, user_features=matrices.user_features, item_features=matrices.item_features,
                          sample_weight=weights, epochs=1, num_threads=config.threads)
        epoch_metrics = {"epoch_seconds": time.perf_counter() - t}
        last = epoch == config.epochs
        if evaluate is not None and (last or (config.eval_every and epoch % config.eval_every == 0)):
            epoch_metrics.update(evaluate(model))
            bar.set_postfix({k: round(v, 4) for k, v in epoch_metrics.items() if k != "epoch_seconds"})
        if on_epoch is not None:
            on_epoch(epoch, epoch_metrics)
    return model


def _unseen(test, train):  # type: ignore[no-untyped-def]
    """Test positives minus pairs already in the train set (those are not predictions)."""
    test, train = test.tocsr(), train.tocsr()
    test = test - test.multiply(train.astype(bool))
    test.eliminate_zeros()
    return test


def _eval_users(test, config: EmbeddingConfig) -> np.ndarray:
    users = np.flatnonzero(np.diff(test.tocsr().indptr))
    if len(users) > config.max_eval_users:
        users = np.sort(np.random.default_rng(config.seed).choice(users, config.max_eval_users, replace=False))
    return users


def _embeddings(model, matrices: _Matrices, data: TrainingData, config: EmbeddingConfig,  # type: ignore[no-untyped-def]
                metrics: dict[str, float]) -> Embeddings:
    import lightfm

    biases, vectors = model.get_item_representations(matrices.item_features)
    active = {i.item_id for i in data.items if i.active} if data.items else set(matrices.item_ids)
    ids = [i for i in matrices.item_ids if i in active]
    rows = [matrices.item_index[i] for i in ids]
    metadata = {"config": asdict(config), "metrics": metrics, "lightfm_version": lightfm.__version__,
                "trained_ts": time.time(),
                "data_until": max((x.ts for x in data.interactions), default=0.0)}  # what a scheduled training counts from
    return Embeddings(
        FeatureTable(matrices.user_tokens, model.user_embeddings.astype(np.float32), model.user_biases.astype(np.float32)),
        FeatureTable(matrices.item_tokens, model.item_embeddings.astype(np.float32), model.item_biases.astype(np.float32)),
        ids, biases[rows].astype(np.float32), vectors[rows].astype(np.float32),
        normalize=True, metadata=metadata, ann_threshold=None,  # the server that loads it builds its index
    )


# -- data directory and command line ---------------------------------------------------------------------


def load_training_data(
    data_dir: str | Path,
    config: EmbeddingConfig,
    *,
    events: str | Path | None = None,
    interactions_csv: str | Path | None = None,
    store: str = "",
) -> TrainingData:
    """Interactions and user features from the event log (or ``events``: a JSONL export or another
    data directory), the catalog from the event log, plus the interactions of ``interactions_csv``.
    The event log is the data directory's, or ``store`` (a ``postgresql://`` URL) when given.

    The Parquet export is refused: its rows keep each slot's final reward but not the labelled
    rewards that interactions are weighted by.
    """
    from engine.logreader import EVENT_LOG, LogReader
    from training.replay import load_joined

    if events is not None and Path(events).suffix == ".parquet":
        raise InvalidRequest("events", f"{events}: the Parquet export has no reward labels; use a JSONL export")

    database = store or Path(data_dir) / EVENT_LOG
    log = LogReader.open(database) if store or Path(database).exists() else None
    sources = []
    try:
        if events is not None:
            interactions, user_features = interactions_from_log(load_joined(events), config)
            sources.append(interactions_dataset(Path(events), interactions))
        elif log is not None:
            interactions, user_features = interactions_from_log(log.history(), config)
            sources.append(interactions_dataset(Path(database) if not store else log.database.name, interactions))
        else:
            interactions, user_features = [], {}
        items = log.items() if log is not None else []
    finally:
        if log is not None:
            log.close()
    if interactions_csv is not None:
        imported = read_interactions_csv(interactions_csv)
        sources.append(interactions_dataset(Path(interactions_csv), imported))
        interactions += imported
    return TrainingData(interactions, user_features, items, tuple(sources))


def interactions_dataset(store: Path | str, interactions: Sequence[Interaction]) -> DatasetFacts:
    """Lineage of the interactions read from ``store``: their count, time range and digest.

    The range covers the dated interactions (a CSV row without a timestamp has none).
    """
    dated = [x.ts for x in interactions if x.ts > 0]
    digest = digest_lines(f"{x.user_id}\t{x.item_id}\t{x.weight!r}\t{x.ts!r}" for x in interactions)
    name = store.name if isinstance(store, Path) else "event log"  # a store URL (its password redacted)
    return DatasetFacts(name=name, store=str(store), rows=len(interactions), first_ts=min(dated, default=None),
                        last_ts=max(dated, default=None), digest=digest, extra=(("undated", len(interactions) - len(dated)),))


def config_from_args(args: SimpleNamespace) -> EmbeddingConfig:
    weights = EmbeddingConfig().label_weights
    if args.label_weight:
        pairs = []
        for entry in args.label_weight:
            label, sep, value = entry.partition("=")
            try:
                pairs.append((label, float(value)))
            except ValueError:
                raise InvalidRequest("label_weight", f"expected LABEL=WEIGHT, got {entry!r}") from None
            if not sep or not label:
                raise InvalidRequest("label_weight", f"expected LABEL=WEIGHT, got {entry!r}")
        weights = tuple(pairs)
    names = ("loss", "components", "epochs", "learning_rate", "item_alpha", "user_alpha", "max_sampled", "threads",
             "seed", "test_fraction", "k", "eval_every", "default_weight")
    config = EmbeddingConfig(**{n: getattr(args, n) for n in names}, label_weights=weights, refit=not args.no_refit)
    config.validate()
    return config


def run(args: SimpleNamespace, on_epoch: EpochCallback | None = None) -> TrainingResult:
    """``recbandit train-embeddings``: train from ``args`` (the command's options,
    :class:`server.settings.TrainEmbeddingsOptions`, and ``data_dir``) and report."""
    config = config_from_args(args)
    uri = None
    if not args.no_track:
        from training.tracking import default_tracking_uri

        uri = args.tracking_uri or default_tracking_uri(args.data_dir)
    result = train_from_log(args.data_dir, config, events=args.events, interactions_csv=args.interactions,
                            tracking_uri=uri, progress=not args.no_progress, on_epoch=on_epoch)
    print(format_metrics(result.metrics, config.k))
    print(f"wrote {result.path}")
    if uri:
        print(f"tracked in {uri} (experiment {EMBEDDINGS_EXPERIMENT})")
    return result


EMBEDDINGS_EXPERIMENT = "recbandit-embeddings"


def train_from_log(
    data_dir: str | Path,
    config: EmbeddingConfig,
    *,
    events: Path | None = None,
    interactions_csv: Path | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    store: str = "",
    incumbent: Embeddings | None = None,
    write: bool = True,
) -> TrainingResult:
    """Train on the data directory's log (or ``store``'s), write the artifact there (unless ``write``
    is False: a scheduled training's artifact is published by :mod:`engine.retraining`), and track
    the run in MLflow. With ``incumbent`` (the embeddings in use) the run is judged against it
    (:func:`no_worse`): one that scores worse is tagged ``published=False`` and not written.

    With a ``tracking_uri`` the run goes to the experiment ``recbandit-embeddings``: the config as
    params, the holdout metrics per evaluated epoch and at the end, the interactions read as dataset
    inputs (store, rows, time range, digest), ``training.png`` (see :func:`training.plots.plot_training`)
    and the artifact.
    """
    data = load_training_data(data_dir, config, events=events, interactions_csv=interactions_csv, store=store)
    if tracking_uri is None:
        result = train_embeddings(data, config, on_epoch=on_epoch, progress=progress, incumbent=incumbent)
        path = write_artifact(data_dir, result.embeddings) if write and no_worse(result.metrics, config.k) else None
        return TrainingResult(result.embeddings, result.metrics, path)
    import tempfile

    from training.plots import plot_training
    from training.tracking import tracked_run

    history: list[tuple[int, dict[str, float]]] = []
    with tracked_run(tracking_uri, EMBEDDINGS_EXPERIMENT, config, run_name="lightfm") as tracked:
        for source in data.sources:
            tracked.log_input(source, "training")

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            history.append((epoch, metrics))
            tracked.log_metrics(metrics, step=epoch)
            if on_epoch is not None:
                on_epoch(epoch, metrics)

        result = train_embeddings(data, config, on_epoch=log_epoch, progress=progress, incumbent=incumbent)
        tracked.log_metrics(result.metrics)
        published = no_worse(result.metrics, config.k)
        tracked.set_tags({"published": published, "scheduled": not write})
        path = write_artifact(data_dir, result.embeddings) if write and published else None
        with tempfile.TemporaryDirectory(prefix="recbandit-embeddings-") as tmp:
            if published:  # the artifact as it is (or will be) served
                tracked.log_artifact(path or write_artifact(tmp, result.embeddings), "embeddings")
            plot_training(history, result.metrics, config.k, Path(tmp) / "training.png")
            tracked.log_artifact(Path(tmp) / "training.png")
    return TrainingResult(result.embeddings, result.metrics, path)


MIN_FRESH_INTERACTIONS = 20
"""Holdout interactions newer than the embeddings in use that a comparison with them needs."""


def no_worse(metrics: Mapping[str, float], k: int) -> bool:
    """Whether new embeddings score at least as well as the ones in use on the interactions neither
    learned from (:func:`train_embeddings`), by recall@k, then AUC on a tie; true when there was
    nothing to compare (no embeddings in use, or too few fresh interactions)."""
    key = f"recall_at_{k}"
    if f"incumbent_{key}" not in metrics:
        return True
    new = (metrics[f"challenger_{key}"], metrics.get("challenger_auc", 0.0))
    return new >= (metrics[f"incumbent_{key}"], metrics.get("incumbent_auc", 0.0))


class ScheduledTraining:
    """LightFM's :class:`engine.retraining.EmbeddingsTrainer`: trains from the store on a schedule,
    tracked in MLflow, written to the data directory only when no worse than the embeddings in use."""

    def __init__(self, data_dir: str | Path, config: EmbeddingConfig, *, store: str = "",
                 tracking_uri: str | None = None) -> None:
        config.validate()
        self.data_dir, self.config, self.store, self.tracking_uri = Path(data_dir), config, store, tracking_uri

    def train(self, incumbent: Embeddings | None) -> TrainedEmbeddings:
        result = train_from_log(self.data_dir, self.config, store=self.store, incumbent=incumbent,
                                tracking_uri=self.tracking_uri, progress=False, write=False)
        k, metrics = self.config.k, result.metrics
        publish = no_worse(metrics, k)
        if f"incumbent_recall_at_{k}" in metrics:
            reason = (f"{'no worse' if publish else 'worse'}: recall@{k} {metrics[f'challenger_recall_at_{k}']:.4f} "
                      f"against {metrics[f'incumbent_recall_at_{k}']:.4f} for the embeddings in use, "
                      f"on {int(metrics['fresh_test_interactions'])} interactions neither learned from")
        else:
            reason = f"recall@{k} {metrics.get(f'recall_at_{k}', float('nan')):.4f}, nothing to compare with"
        return TrainedEmbeddings(result.embeddings if publish else None, dict(metrics), reason,
                                 float(result.embeddings.metadata.get("data_until", 0.0)))


def format_metrics(metrics: Mapping[str, float], k: int) -> str:
    lines = [f"{int(metrics['interactions'])} interactions ({int(metrics['train_interactions'])} train, "
             f"{int(metrics['test_interactions'])} test), {int(metrics['users'])} users, {int(metrics['items'])} items, "
             f"{metrics['train_seconds']:.1f} s"]
    if "auc" in metrics:
        lines += ["| holdout      | precision@{k} | recall@{k} |   AUC |".format(k=k),
                  "|--------------|--------------|-----------|-------|"]
        for name, prefix in (("lightfm", ""), ("popularity", "popularity_")):
            lines.append(f"| {name:<12} | {metrics[prefix + f'precision_at_{k}']:12.4f} | "
                         f"{metrics[prefix + f'recall_at_{k}']:9.4f} | {metrics[prefix + 'auc']:.3f} |")
    return "\n".join(lines)


# -- a world with planted preferences (tests and benchmark) --------------------------------------------------


def planted_world(
    n_users: int = 300,
    n_items: int = 120,
    n_categories: int = 6,
    per_user: int = 8,
    taste: float = 0.85,
    seed: int = 0,
) -> TrainingData:
    """Users in ``n_categories`` segments; segment ``s`` picks an item of category ``s`` with
    probability ``taste``, otherwise an item drawn by global popularity (Zipf-like). Items have a
    category (``i % n_categories``) and a brand that carries no signal. One interaction per pick,
    weight 1, at a uniform random time, so the time-ordered holdout mixes every user."""
    rng = np.random.default_rng(seed)
    segment = np.arange(n_users) % n_categories
    category = np.arange(n_items) % n_categories
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popular = rng.choice(n_items, size=(n_users, per_user), p=popularity / popularity.sum())
    by_category = [np.flatnonzero(category == c) for c in range(n_categories)]
    liked = np.stack([rng.choice(by_category[s], per_user) for s in segment])
    picks = np.where(rng.random((n_users, per_user)) < taste, liked, popular)
    ts = rng.random((n_users, per_user))
    interactions = [Interaction(f"user-{u}", f"item-{i}", 1.0, float(t))
                    for u, row, trow in zip(range(n_users), picks.tolist(), ts.tolist()) for i, t in zip(row, trow)]
    users = {f"user-{u}": {"segment": f"seg-{segment[u]}"} for u in range(n_users)}
    brands = rng.integers(0, 5, n_items)
    items = [Item(f"item-{i}", {"category": f"cat-{category[i]}", "brand": f"brand-{brands[i]}"}) for i in range(n_items)]
    return TrainingData(interactions, users, items)
