"""Tracker protocol: MLflow when a tracking URI is set (rank 0 only in distributed jobs),
a null tracker otherwise. Callers never import mlflow themselves."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Protocol

# While a parent run is open in this process (``parent_run``), every tracker made here becomes its child,
# in the parent's experiment and store: {"run_id", "experiment", "uri"}
_PARENT: dict[str, str] = {}


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
        if run_id:  # a run another process opened lives in its own experiment (a quickstart's, say)
            mlflow.set_experiment(experiment_id=mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id)
        else:
            mlflow.set_experiment(_PARENT["experiment"] if parent else experiment)
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


def resolve_uri(tracking_uri: str | None) -> str:
    """The store a job tracks to: its own URI, else ``MLFLOW_TRACKING_URI``, else an open parent run's ("")."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _PARENT.get("uri", "")


def make_tracker(tracking_uri: str | None, experiment: str, run_name: str | None = None, rank: int = 0,
                 run_id: str | None = None) -> Tracker:
    """MLflow if ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``, or an open ``parent_run``'s) is set and this is
    rank 0."""
    uri = resolve_uri(tracking_uri)
    if not uri or rank != 0:
        return NullTracker()
    return MLflowTracker(uri, experiment, run_name, run_id)


class ParentTracker:
    """A run that stays open while its children (one per stage of a chain) run; written through the client,
    so it is never the fluent 'active' run that the children's ``start_run`` would refuse to nest under."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifact_location: str | None = None) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment, artifact_location)
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
def parent_run(tracking_uri: str | None, experiment: str, run_name: str,
               artifact_location: str | None = None) -> Iterator[Tracker]:
    """A parent MLflow run for a chain of jobs in this process: the trackers they make become its children.
    ``artifact_location`` applies when the experiment is new (else MLflow's default, ./mlruns of the cwd)."""
    if not tracking_uri:
        yield NullTracker()
        return
    parent = ParentTracker(tracking_uri, experiment, run_name, artifact_location)
    _PARENT.update(run_id=parent.run_id, experiment=experiment, uri=tracking_uri)
    try:
        yield parent
    finally:
        _PARENT.clear()
        parent.close()
