"""A few DuDi steps on a three-node Ray cluster started on this machine (`ray.cluster_utils.Cluster`): the learner,
two rollout workers and the teacher each on a node of their own (custom resources `learner`, `rollout`,
`teacher`), weights over the gloo weight group with the same-node file path switched off, and a sha256 of every
tensor compared on both ends after every push, for ZeRO-2 and ZeRO-3.

Ray allows one cluster per process, so `tests/test_multinode.py` runs this as a subprocess:
    python tests/multinode_run.py TINY_WORLD OUT_DIR     → prints one JSON line with what it saw
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(tiny_world: Path, out: Path) -> dict:
    import ray
    from conftest import e2e_config, free_port
    from ray.cluster_utils import Cluster

    from orchestrator.loop import Trainer
    from rollout.group import RolloutGroup
    from rollout.types import GenerationRequest

    env = {"VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false"}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"learner": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, resources={"rollout": 1})
    cluster.add_node(num_cpus=1, resources={"teacher": 1})
    ray.init(address=cluster.address, runtime_env={"env_vars": env})
    report: dict = {"nodes": len(ray.nodes()), "runs": {}}
    serve_port = free_port()
    rollout = None
    try:
        for zero in (2, 3):
            cfg = e2e_config(
                tiny_world,
                out,
                serve_port,
                name=f"zero{zero}",
                learner={"zero_stage": zero, "resources": {"learner": 0.5}, "num_cpus_per_rank": 0.25},
                rollout={
                    "num_workers": 2,
                    "resources": {"rollout": 0.25},
                    "num_cpus_per_worker": 0.25,
                    "max_model_len": 384,
                    "enforce_eager": True,
                    "sampling": {"max_new_tokens": 12},
                },
                teacher={
                    "resources": {"teacher": 0.5},
                    "num_cpus_per_replica": 0.25,
                    "num_threads": 1,
                    "max_seq_len": 384,
                    "http_port": serve_port,
                },
                weight_sync={"transport": "broadcast", "verify": True},
                distill={"steps": 2, "batch_size": 8, "lr": 1e-2},
            )
            if rollout is None:
                rollout = RolloutGroup(cfg.rollout, cfg.models.student, cfg.seed)
            trainer = Trainer(cfg, progress=False, rollout=rollout)
            try:
                trainer.start()
                trainer.run_stage("distill", cfg.distill, cfg.objective, cfg.models.student)
            finally:
                trainer.close()
            report["runs"][f"zero{zero}"] = {
                "nodes": trainer.result.nodes["distill"],
                "weight_sync": trainer.result.weight_sync["distill"],
                "losses": {k: v for k, v in trainer.result.last_metrics["distill"].items() if k.startswith("loss/")},
            }
        # Two workers: prompts are split between them and come back complete and in request order.
        prompts = [[1, 5 + i, 9 + i, 13] for i in range(7)]
        spec = rollout.sampling_spec(greedy=True, max_new_tokens=6)
        forward = rollout.generate([GenerationRequest(p) for p in prompts], spec)
        backward = rollout.generate([GenerationRequest(p) for p in reversed(prompts)], spec)
        report["two_workers"] = {
            "in_order": [r.prompt_ids for r in forward] == prompts,
            "complete": all(r.finished or len(r.response_ids) == 6 for r in forward),
            "same_after_reordering": [r.response_ids for r in forward] == [r.response_ids for r in reversed(backward)],
            "versions": rollout.policy_versions(),
        }
    finally:
        if rollout is not None:
            rollout.shutdown()
        ray.shutdown()
        cluster.shutdown()
    return report


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
