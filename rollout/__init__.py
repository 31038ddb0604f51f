"""Rollout: vLLM engines in Ray actors that sample from the student and take new weights in place.

Owns its message types (`rollout.types`); imports nothing from learner/, teacher_server/ or orchestrator/.
"""
