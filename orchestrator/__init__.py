"""Orchestrator: the only package that knows all four components.

It owns the run config, the data and the verbalizer, the training loop (generate → score → train →
sync), evaluation and the `dudi` command line.
"""
