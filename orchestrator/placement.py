"""Where each role's actors run: Ray actor options for learner ranks, rollout workers and teacher replicas.

`ray.placement=disaggregated` (default): each role goes wherever Ray finds its CPUs/GPUs and the custom resources
of its config (`learner.resources`, `rollout.resources`, `teacher.resources`), so nodes that advertise, say,
`{"rollout": 1}` take the rollout workers. `colocated`: one STRICT_PACK placement group holds every learner rank
and rollout worker on a single node, and the teacher's replicas (and any helper engine) are pinned to that node
with a label selector (Serve replicas cannot join an outside placement group). Weights then move through the
same-node path (see `orchestrator.weight_sync`).
"""

from __future__ import annotations

from orchestrator.config import RunConfig


class Placement:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.group = None
        self.node_id: str | None = None
        if cfg.ray.placement == "colocated":
            self._reserve_one_node()

    def _reserve_one_node(self) -> None:
        from ray.util.placement_group import placement_group, placement_group_table

        learner, rollout = self.cfg.learner, self.cfg.rollout
        bundles = [
            _bundle(learner.num_cpus_per_rank, learner.num_gpus_per_rank, learner.resources)
        ] * learner.num_ranks + [
            _bundle(rollout.num_cpus_per_worker, rollout.num_gpus_per_worker, rollout.resources)
        ] * rollout.num_workers
        self.group = placement_group(bundles, strategy="STRICT_PACK", name=f"dudi-{self.cfg.name}")
        if not self.group.wait(timeout_seconds=120):
            raise RuntimeError(
                f"ray.placement=colocated: no single node has room for {learner.num_ranks} learner rank(s) and "
                f"{rollout.num_workers} rollout worker(s) ({bundles}); see `ray status`"
            )
        self.node_id = placement_group_table(self.group)["bundles_to_node_id"][0]

    def learner_options(self) -> list[dict]:
        return [self._bundle_options(rank) for rank in range(self.cfg.learner.num_ranks)]

    def rollout_options(self) -> list[dict]:
        first = self.cfg.learner.num_ranks
        return [self._bundle_options(first + i) for i in range(self.cfg.rollout.num_workers)]

    def pinned_options(self) -> dict:
        """For actors outside the placement group (teacher replicas, helper engines)."""
        return {"label_selector": {"ray.io/node-id": self.node_id}} if self.node_id else {}

    def _bundle_options(self, index: int) -> dict:
        if self.group is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                self.group, placement_group_bundle_index=index, placement_group_capture_child_tasks=False
            )
        }

    def close(self) -> None:
        if self.group is not None:
            from ray.util import remove_placement_group

            remove_placement_group(self.group)
            self.group = None


def _bundle(cpus: float, gpus: float, resources: dict[str, float]) -> dict[str, float]:
    bundle = {"CPU": cpus, **resources}
    if gpus:
        bundle["GPU"] = gpus
    bundle = {k: v for k, v in bundle.items() if v}
    return bundle or {"CPU": 0.01}  # Ray refuses empty bundles
