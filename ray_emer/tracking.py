"""Tracker protocol: every job tracks to MLflow by default (rank 0 only in distributed jobs).

Where to: the job's ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else an open parent run's store,
else the local default store ``sqlite:///$RAY_EMER_HOME/mlflow.db`` (``RAY_EMER_HOME`` defaults to
``~/.ray_emer``; artifacts beside it in ``mlartifacts/``). ``tracking.enabled: false`` turns it off.
A sqlite file lives on one node: on a multi-node cluster run one ``mlflow server`` on the head and set
``MLFLOW_TRACKING_URI`` to it (README). Callers never import mlflow themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Protocol

# While a parent run is open in this process (``parent_run``), every tracker made here becomes its child,
# in the parent's experiment and store: {"run_id", "experiment", "uri"}
_PARENT: dict[str, str] = {}


@dataclasses.dataclass
class TrackingConfig:
    enabled: bool = True  # false: no MLflow at all
    uri: str = ""  # empty: MLFLOW_TRACKING_URI, else the default local store (sqlite:///$RAY_EMER_HOME/mlflow.db)
    experiment: str = ""  # empty: the job's own (ray_emer-train, ray_emer-extract, ...)
    run_name: str = ""  # empty: the job's own
    # training stages: register the exported checkpoint as a new version of this model (MLflow Model Registry;
    # ray-emer train --register NAME); empty: no registration
    register_as: str = ""


def tracking(experiment: str) -> TrackingConfig:
    """A job's default tracking section (its experiment name)."""
    return TrackingConfig(experiment=experiment)


def home() -> str:
    """ray_emer's local state folder: ``$RAY_EMER_HOME``, else ``~/.ray_emer``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("RAY_EMER_HOME") or "~/.ray_emer"))


def default_uri() -> str:
    """The local default store: ``sqlite:///$RAY_EMER_HOME/mlflow.db``."""
    os.makedirs(home(), exist_ok=True)
    return f"sqlite:///{os.path.join(home(), 'mlflow.db')}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside its file (``mlartifacts/``), not into the caller's cwd."""
    if uri.startswith("sqlite:///"):
        return os.path.join(os.path.dirname(uri[len("sqlite:///"):]) or ".", "mlartifacts")
    return None  # a server or a file store decides itself


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker(Protocol):
    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...
    def log_artifact(self, path: str) -> None: ...
    def close(self) -> None: ...


class NullTracker:
    run_id = None

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str) -> None:
        pass

    def close(self) -> None:
        pass


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MLflowTracker:
    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None = None,
                 run_id: str | None = None) -> None:
        import mlflow

        self._mlflow = mlflow
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(tracking_uri)
        # mlflow also exports the URI as MLFLOW_TRACKING_URI: put it back, or every later job in this process
        # (and every Ray worker it starts) would track into this run's store without being asked to
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        parent = _PARENT.get("run_id") if not run_id else None
        client = mlflow.MlflowClient(tracking_uri)
        if run_id:  # a run another process opened lives in its own experiment (a quickstart's, say)
            mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
        else:
            mlflow.set_experiment(experiment_id=_experiment_id(
                client, _PARENT["experiment"] if parent else experiment, tracking_uri))
        # run_id: continue a run another process opened (the driver of a distributed job; a restarted rank 0)
        self.run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=run_name,
                                                                                   parent_run_id=parent)
        self.run_id = self.run.info.run_id

    def log_params(self, params: dict) -> None:
        self._mlflow.log_params({k: str(v)[:500] for k, v in _flatten(params).items()})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        flat = {k: float(v) for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._mlflow.log_metrics(flat, step=step)

    def log_artifact(self, path: str) -> None:
        self._mlflow.log_artifact(path)

    def close(self) -> None:
        self._mlflow.end_run()


def resolve_uri(tracking_uri: str | None, enabled: bool = True) -> str:
    """The store a job tracks to: its own URI, else ``MLFLOW_TRACKING_URI``, else an open parent run's, else
    the local default store; "" when tracking is off."""
    if not enabled:
        return ""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _PARENT.get("uri", "") or default_uri()


def make_tracker(tracking_uri: str | None, experiment: str, run_name: str | None = None, rank: int = 0,
                 run_id: str | None = None) -> Tracker:
    """MLflow on the resolved store (``resolve_uri``) when this is rank 0; a null tracker otherwise."""
    uri = resolve_uri(tracking_uri)
    if rank != 0:
        return NullTracker()
    return MLflowTracker(uri, experiment, run_name, run_id)


def open_tracker(cfg: TrackingConfig, run_name: str | None = None, rank: int = 0) -> Tracker:
    """The tracker a job's ``tracking`` section asks for (null when disabled or not rank 0)."""
    if not cfg.enabled or rank != 0:
        return NullTracker()
    return make_tracker(cfg.uri or None, cfg.experiment, cfg.run_name or run_name)


class ParentTracker:
    """A run that stays open while its children (one per stage of a chain) run; written through the client,
    so it is never the fluent 'active' run that the children's ``start_run`` would refuse to nest under."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        exp_id = _experiment_id(self.client, experiment, tracking_uri)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def log_params(self, params: dict) -> None:
        for k, v in _flatten(params).items():
            self.client.log_param(self.run_id, k, str(v)[:500])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for k, v in _flatten(metrics).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.client.log_metric(self.run_id, k, float(v), step=step or 0)

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


@contextlib.contextmanager
def parent_run(tracking_uri: str | None, experiment: str, run_name: str) -> Iterator[Tracker]:
    """A parent MLflow run for a chain of jobs in this process: the trackers they make become its children
    ("" or None: no tracking)."""
    if not tracking_uri:
        yield NullTracker()
        return
    parent = ParentTracker(tracking_uri, experiment, run_name)
    _PARENT.update(run_id=parent.run_id, experiment=experiment, uri=tracking_uri)
    try:
        yield parent
    finally:
        _PARENT.clear()
        parent.close()
