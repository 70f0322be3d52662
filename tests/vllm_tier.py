"""Run inside the vLLM venv (see test_vllm.py): HF and vLLM greedy answers from the same prompt embeddings.

    .venv-vllm/bin/python tests/vllm_tier.py CHECKPOINT FEATURES OUT.json

Labels the feature rows twice with the plain-Python labeller, once per engine, and writes
the generated token ids of both, the labels, and what a wrong-sized embedding gives.
vLLM spawns its engine core, hence the ``__main__`` guard.
"""

from __future__ import annotations

import json
import sys
import time


def main(checkpoint: str, features: str, out: str) -> None:
    import torch

    from ray_emer.features.shards import read_shards, table_columns
    from ray_emer.infer.engine import EngineError
    from ray_emer.infer.labeller import Labeller, LabellerConfig

    batch = table_columns(read_shards(features))
    result: dict = {"clips": len(batch["clip_id"])}
    tokens: dict[str, list[list[int]]] = {}
    for engine in ("hf", "vllm"):
        t0 = time.perf_counter()
        lab = Labeller(checkpoint, LabellerConfig(engine=engine, description_tokens=24, label_tokens=12, batch_size=8))
        t1 = time.perf_counter()
        mb = lab.processor.from_rows(batch, "description", with_targets=False)
        gens = lab.engine.generate_embeds(lab.embed(mb), 24)
        tokens[engine] = [g.token_ids for g in gens]
        rows = lab.label_batch(batch)
        result[engine] = {"init_s": round(t1 - t0, 2), "label_s": round(time.perf_counter() - t1, 2),
                          "token_ids": tokens[engine], "texts": [g.text for g in gens],
                          "labels": [r["labels"] for r in rows], "status": [r["status"] for r in rows]}
        if engine == "vllm":
            try:  # vLLM itself does not check the hidden size of offline prompt embeds: the engine must
                lab.engine.generate_embeds([torch.zeros(5, lab.engine.hidden_size + 8)], 4)
                result["wrong_hidden"] = "accepted"
            except EngineError as exc:
                result["wrong_hidden"] = str(exc)
            result["after_wrong_hidden"] = [g.token_ids for g in lab.engine.generate_embeds(lab.embed(mb)[:1], 24)]
            result["vllm_dtype"] = str(lab.engine.dtype)
            embeds = lab.embed(mb)
            streams = [list(lab.engine.stream_embeds(e, 24)) for e in embeds[:3]]  # token by token, same engine
            result["stream_texts"], result["stream_pieces"] = ["".join(s) for s in streams], [len(s) for s in streams]
            early = lab.engine.stream_embeds(embeds[0], 24)
            next(early)
            early.close()  # a consumer that leaves: the request is aborted, the engine free for the next call
            result["after_early_close"] = [g.token_ids for g in lab.engine.generate_embeds(embeds[:1], 24)]
            sp = lab.engine.sampling_params()  # what every request carries
            result["sampling"] = [sp.repetition_penalty, sp.presence_penalty, sp.frequency_penalty, sp.temperature]
            # what vLLM would default to from the model's generation_config (the checkpoint ships a penalty)
            result["engine_default_repetition_penalty"] = lab.engine.llm.get_default_sampling_params().repetition_penalty
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(*sys.argv[1:4])
