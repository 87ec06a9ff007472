"""A policy as an MLflow model: ``mlflow.pyfunc.load_model(uri).predict(frame)`` gives the pmf.

The model folder is a ``python_function`` model whose one artifact is the VW model file
(``artifacts/model.vw``) plus ``policy.json`` (the candidate's settings and VW arguments). The
server does not go through pyfunc: it reads the VW file at the path the ``MLmodel`` file names
(:func:`vw_model_path`) and serves it with its own adapter.

Input, one row per decision, every column a JSON string, in the event log's own shapes::

    user_features   {"segment": "premium"}
    context         {"channel": "web", "hour": "12", "weekday": "tue"}   (as logged: hour and weekday included)
    candidates      [{"item_id": "item-1", "features": {"category": "c1", "price": 15.0}}, ...]

Output, one row per decision: ``item_ids`` (the candidates' ids, in input order) and ``pmf``, the
policy's probability of choosing each for the first slot, summing to 1 — the pmf the server's
adapter computes for the same request, before any sampling.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from engine.bandit import BanditConfig, VWBandit, example_lines
from engine.features import with_time_context
from engine.records import features_from_dict

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # see quiet_mlflow
_quieting = threading.Lock()

VW_ARTIFACT = "vw_model"
INPUT_COLUMNS = ("user_features", "context", "candidates")
PORTRAIT_COLUMN = "portrait"
"""Optional: the user's portrait features (engine.portraits), as the event log holds them."""


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Scores decisions into pmfs with the VW model file of a registered policy."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        path = context.artifacts[VW_ARTIFACT]
        self._bandit = VWBandit(BanditConfig(), model_path=path)  # the file carries its own arguments

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        """A frame (or a mapping of columns) of JSON strings in; ``item_ids`` and ``pmf`` per row out."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"model_input: missing column(s) {', '.join(missing)}; expected {', '.join(INPUT_COLUMNS)}")
        item_ids, pmfs = [], []
        portraits = frame[PORTRAIT_COLUMN] if PORTRAIT_COLUMN in frame.columns else [None] * len(frame)
        for row, portrait in zip(frame.itertuples(index=False), portraits, strict=True):
            ids, pmf = self.score(_decoded(row.user_features), _decoded(row.context), _decoded(row.candidates),
                                  _decoded(portrait) if portrait else None)
            item_ids.append(ids)
            pmfs.append(pmf)
        return pd.DataFrame({"item_ids": item_ids, "pmf": pmfs})

    def score(self, user_features: dict, context: dict, candidates: Sequence[dict],  # type: ignore[type-arg]
              portrait: dict | None = None) -> tuple[list[str], list[float]]:  # type: ignore[type-arg]
        """The pmf over ``candidates`` (dicts with ``item_id`` and ``features``) for one decision, from
        the lines the server builds: the context gets the clock it adds (``hour`` and ``weekday`` now,
        in UTC, unless sent; ``daypart`` and ``weekend``), and the portrait its namespace."""
        if not candidates:
            raise ValueError("candidates: at least one candidate to score")
        ids = [str(c["item_id"]) for c in candidates]
        shared, lines = example_lines(features_from_dict(user_features),
                                      with_time_context(features_from_dict(context), time.time()),
                                      ((i, features_from_dict(c.get("features") or {})) for i, c in zip(ids, candidates)),
                                      features_from_dict(portrait or {}))
        return ids, self._bandit.pmf(shared, lines)


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def signature():  # type: ignore[no-untyped-def]
    """Three JSON-string columns in; the candidates' ids and the pmf (arrays) out."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = Schema([*(ColSpec(DataType.string, name) for name in INPUT_COLUMNS),
                     ColSpec(DataType.string, PORTRAIT_COLUMN, required=False)])
    outputs = Schema([ColSpec(Array(DataType.string), "item_ids"), ColSpec(Array(DataType.double), "pmf")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> dict[str, list[str]]:
    return {
        "user_features": [json.dumps({"segment": "premium"})],
        "context": [json.dumps({"channel": "web", "hour": "12", "weekday": "tue"})],
        "candidates": [json.dumps([{"item_id": f"item-{i}", "features": {"category": f"c{i}"}} for i in range(3)])],
    }


def save_policy_model(vw_model: Path, settings: dict[str, object], path: Path) -> Path:
    """Write the pyfunc model folder at ``path`` (which must not exist): the VW file and ``policy.json``."""
    import numpy
    import vowpalwabbit

    import engine

    with quiet_mlflow(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # advice on type hints and input examples
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(Path(__file__).with_name("pyfunc_policy.py")),
            artifacts={VW_ARTIFACT: str(vw_model)},
            signature=signature(),
            # recbandit's own code travels with the model: no package of that name is ever installed
            code_paths=[str(Path(engine.__file__).parent), str(Path(__file__).parent)],
            pip_requirements=[f"vowpalwabbit=={vowpalwabbit.__version__}", f"pandas=={pd.__version__}",
                              f"numpy=={numpy.__version__}"],
        )
    (path / "input_example.json").write_text(json.dumps(input_example(), indent=2))
    (path / "policy.json").write_text(json.dumps(settings, indent=2))
    return path


def vw_model_path(model_dir: Path) -> Path:
    """The VW file of a downloaded policy: the pyfunc artifact the ``MLmodel`` names, else ``model.vw``.

    Versions registered before policies were MLflow models hold ``model.vw`` at the top.
    """
    from mlflow.models import Model

    if (model_dir / "MLmodel").is_file():
        flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
        entry = flavor.get("artifacts", {}).get(VW_ARTIFACT)
        if entry:
            return model_dir / entry["path"]
    return model_dir / "model.vw"


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """No artifact progress bar and no INFO lines from MLflow while a model is copied.

    A policy is a few files copied locally: a bar per copy is noise on a terminal, and a bar
    redrawn with carriage returns in a log file (a server's, a CI job's) is worse. The bar is
    turned off once for the process, when this module is imported (never from a worker thread);
    MLflow's logger is held at WARNING while the block runs, one block at a time.
    """
    with _quieting:
        logger = logging.getLogger("mlflow")
        level = logger.level
        logger.setLevel(max(level, logging.WARNING))
        try:
            yield
        finally:
            logger.setLevel(level)


def _quiet(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING