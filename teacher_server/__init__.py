"""Teacher server: a Ray Serve application that scores (prompt, response) token sequences.

Owns its message types (`teacher_server.types`); imports nothing from learner/, rollout/ or orchestrator/.
"""
