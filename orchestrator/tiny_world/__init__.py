"""The tiny world: a multilingual arithmetic task, a tokenizer for its eight scripts, and two tiny Qwen2 models.

Built by `dudi tiny-world` deterministically from a seed and cached outside git (see `orchestrator.config.tiny_world_dir`).
"""
