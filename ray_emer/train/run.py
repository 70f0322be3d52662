"""One training stage, one entry point: ``run_stage`` runs it where ``scaling.engine`` says.

``local``: this process (``local.run_local``, no Ray). ``ray``: Ray Train + FSDP2
(``trainer.run_ray_training``; joins a running cluster, else starts a local one). Both
return ``stage.stage_summary``. This is the module the ``train`` command and the jobs
call; it sits above both engines, which share ``stage.py`` and never import each other.
"""

from __future__ import annotations

from ray_emer.progress import say
from ray_emer.train.local import run_local
from ray_emer.train.loop import TrainConfig


def run_stage(cfg: TrainConfig, log=say, **engine_options) -> dict:
    """Train one stage where ``cfg.scaling.engine`` says: ``local`` (this process) or ``ray`` (Ray Train;
    joins a running cluster, else starts a local one). ``engine_options`` go to the Ray engine (e.g.
    ``on_step``). Returns ``stage_summary``; each engine checks the stage's inputs (``check_io``) once."""
    if cfg.scaling.engine == "local":
        if engine_options:
            raise TypeError(f"the local engine takes no options: {sorted(engine_options)}")
        return run_local(cfg, log)
    # Here, not at the top: trainer.py imports Ray (and Ray Train), which a local stage and every importer of
    # this module (the CLI's command table) must not pay for
    from ray_emer.train.trainer import run_ray_training

    return run_ray_training(cfg, log, **engine_options)
