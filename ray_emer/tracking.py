"""Tracker protocol: MLflow when a tracking URI is set (rank 0 only in distributed jobs),
a null tracker otherwise. Callers never import mlflow themselves."""

from __future__ import annotations

import os
from typing import Protocol


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
        mlflow.set_experiment(experiment)
        # run_id: continue a run another process opened (the driver of a distributed job; a restarted rank 0)
        self.run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=run_name)
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


def make_tracker(tracking_uri: str | None, experiment: str, run_name: str | None = None, rank: int = 0,
                 run_id: str | None = None) -> Tracker:
    """MLflow if ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``) is set and this is rank 0."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or rank != 0:
        return NullTracker()
    return MLflowTracker(uri, experiment, run_name, run_id)
