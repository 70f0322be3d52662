"""One training stage, one entry point: ``run_stage`` runs it where ``scaling.engine`` says.

``local``: this process (``local.run_local``, no Ray). ``ray``: Ray Train + FSDP2
(``trainer.run_ray_training``; joins a running cluster, else starts a local one). Both
return ``stage.stage_summary``. This is the module the ``train`` command and the jobs
call; it sits above both engines, which share ``stage.py`` and never import each other.
Here, on the driver, an ``init`` named by a model URI (``models:/``, ``runs:/``) is
resolved to a local directory before any engine starts, and the export is registered
(``tracking.register_as``) after the engine has finished.
"""

from __future__ import annotations

import dataclasses
import json

from ray_emer import storage
from ray_emer.config import to_dict
from ray_emer.model.config import AffectGPTConfig
from ray_emer.progress import say
from ray_emer.registry import RegistryError, is_model_uri, register_checkpoint, resolve_checkpoint
from ray_emer.tracking import resolve_uri
from ray_emer.train.local import run_local
from ray_emer.train.loop import TrainConfig


def run_stage(cfg: TrainConfig, log=say, **engine_options) -> dict:
    """Train one stage where ``cfg.scaling.engine`` says: ``local`` (this process) or ``ray`` (Ray Train;
    joins a running cluster, else starts a local one). ``engine_options`` go to the Ray engine (e.g.
    ``on_step``). Returns ``stage_summary`` (plus ``registered`` with ``tracking.register_as``); each engine
    checks the stage's inputs (``check_io``) once."""
    init = cfg.init
    if cfg.tracking.register_as and not cfg.tracking.enabled:
        raise RegistryError(f"register {cfg.tracking.register_as}: registering needs tracking "
                            "(tracking.enabled: true)")
    if is_model_uri(init):
        cfg = dataclasses.replace(cfg, init=resolve_checkpoint(init, cfg.tracking.uri))
        log(f"[train] --init {init} -> {cfg.init}")
    if cfg.scaling.engine == "local":
        if engine_options:
            raise TypeError(f"the local engine takes no options: {sorted(engine_options)}")
        summary = run_local(cfg, log)
    else:
        # Here, not at the top: trainer.py imports Ray (and Ray Train), which a local stage and every importer of
        # this module (the CLI's command table) must not pay for
        from ray_emer.train.trainer import run_ray_training

        summary = run_ray_training(cfg, log, **engine_options)
    if cfg.tracking.register_as:
        summary["registered"] = register_stage(cfg, summary, init)
        log(f"[train] registered {cfg.output} as {summary['registered']['uri']} (run {summary['run_id']})")
    return summary


def register_stage(cfg: TrainConfig, summary: dict, init: str) -> dict:
    """The stage's export as a new version of ``cfg.tracking.register_as``: its run linked, its settings and
    scores as the version's tags."""
    mcfg = AffectGPTConfig.from_json(storage.read_text(storage.join(cfg.output, "config.json")))
    tags = {"preset": mcfg.preset, "base_llm": "random" if mcfg.init == "random" else mcfg.llm_name,
            "features": cfg.features, "init": init, "steps": summary["steps"], "engine": cfg.scaling.engine,
            "trainable": f"head={cfg.trainable.head}, llm={cfg.trainable.llm}",
            "config": json.dumps(to_dict(cfg), default=str), "first_loss": summary.get("first_loss"),
            "last_loss": summary.get("last_loss")}
    tags.update({f"score.{k}": v for k, v in (summary.get("metrics") or {}).items()})
    return register_checkpoint(cfg.output, cfg.tracking.register_as, summary.get("run_id"),
                               resolve_uri(cfg.tracking.uri), tags,
                               description=f"{mcfg.preset} trained {summary['steps']} steps on {cfg.features}")
