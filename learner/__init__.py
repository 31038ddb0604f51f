"""Learner: a DeepSpeed engine per rank (Ray actors) that optimizes the distillation objective.

It owns its message types (`learner.types`) and never imports the rollout, teacher server or
orchestrator packages: the orchestrator converts their outputs into a `TrainBatch`.
"""
