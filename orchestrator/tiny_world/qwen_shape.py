"""A world at real scale, built offline: random models of Qwen2.5-0.5B's shape and a tokenizer of Qwen's layout.

The tiny world's vocabulary (about 1.5k ids) hides the cost that dominates real runs; this one has Qwen2.5's:
151,936 logit columns, 151,643 byte-level BPE ids (a BPE trained on the tiny world's text, its table filled up
with entries no merge produces), then Qwen's 22 special tokens at Qwen's ids, and Qwen2.5's own chat template
(default system prompt, tool calls). As in the paper's pair, the student is a *base* model (its tokenizer's EOS is
`<|endoftext|>`) and the teacher an *instruct* model (EOS `<|im_end|>`), so a run must end responses with the
chat template's end of turn (`models.end_of_turn`), not with the student's EOS.

The weights are random (the point is shape: memory, wire sizes, start-up), so nothing here learns the task.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

QWEN2_5_VOCAB = 151_936  # logit columns (config.vocab_size), padded beyond the tokenizer's 151,665 ids
QWEN2_5_REGULAR_TOKENS = 151_643  # byte-level BPE ids; the special tokens follow
# Qwen2.5's added tokens, ids 151,643 onwards, and whether each is special (tokenizer_config.json).
QWEN2_5_ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
# Qwen2.5-0.5B (config.json), except max_position_embeddings: 32,768 would only size RoPE caches here.
QWEN2_5_0_5B = {
    "vocab_size": QWEN2_5_VOCAB,
    "hidden_size": 896,
    "intermediate_size": 4_864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4_096,
}
BPE_MERGES_VOCAB = 4_096  # what the tiny world's text supports; the rest of the table is filler
FORMAT_VERSION = 1


def qwen_chat_template() -> str:
    """Qwen2.5-Instruct's chat template, verbatim (base and instruct checkpoints ship the same one).

    Copied from the `chat_template` of Qwen2.5's tokenizer_config.json, as vendored at
    ShishirPatil/gorilla@b4edd01 (berkeley-function-call-leaderboard/bfcl/model_handler/oss_model/qwen.py) and
    byte-identical to the copies in maiqingqiang/Jinja (Tests/ChatTemplateTests.swift, "Qwen2.5-0.5B-Instruct")
    and in the 0.5B and 3B checkpoints of y0tAaAa/Qwen2.5-Instruct; sha256 cd8e9439…2330527f.
    """
    return resources.files("orchestrator.tiny_world").joinpath("qwen2_5_chat_template.jinja").read_text()


def qwen_shaped_tokenizer(texts: list[str], role: str):
    """A `PreTrainedTokenizerFast` with Qwen2.5's id layout and template; `role` is "base" or "instruct"."""
    from tokenizers import AddedToken, Tokenizer

    from orchestrator.tiny_world.tokenizer import train_tokenizer

    if role not in ("base", "instruct"):
        raise ValueError(f"role must be base or instruct, not {role!r}")
    trained = train_tokenizer(texts, BPE_MERGES_VOCAB)
    state = json.loads(trained.backend_tokenizer.to_str())
    learned = [token for token, _ in sorted(state["model"]["vocab"].items(), key=lambda item: item[1])]
    learned = [token for token in learned if token not in {content for content, _ in QWEN2_5_ADDED_TOKENS}]
    # No merge yields a filler entry, so the BPE never emits one; a model may still sample it, and it decodes.
    fillers = [f"<|filler_{i}|>" for i in range(QWEN2_5_REGULAR_TOKENS - len(learned))]
    vocab = {token: index for index, token in enumerate(learned + fillers)}
    state["model"]["vocab"] = vocab
    state["added_tokens"] = []
    backend = Tokenizer.from_str(json.dumps(state))
    backend.add_special_tokens([AddedToken(c, special=s, normalized=False) for c, s in QWEN2_5_ADDED_TOKENS if s])
    backend.add_tokens([AddedToken(c, special=s, normalized=False) for c, s in QWEN2_5_ADDED_TOKENS if not s])
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|endoftext|>" if role == "base" else "<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=qwen_chat_template(),
        model_max_length=32_768,
    )
    first_added = tokenizer.convert_tokens_to_ids(QWEN2_5_ADDED_TOKENS[0][0])
    if first_added != QWEN2_5_REGULAR_TOKENS or len(tokenizer) != QWEN2_5_REGULAR_TOKENS + len(QWEN2_5_ADDED_TOKENS):
        raise RuntimeError(f"tokenizer layout differs from Qwen2.5's ({len(tokenizer)} ids, specials at {first_added})")
    return tokenizer


def _random_model(seed: int, tokenizer, eos_ids: list[int]):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        **QWEN2_5_0_5B,
        bos_token_id=QWEN2_5_REGULAR_TOKENS,
        eos_token_id=eos_ids[0],
        pad_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=QWEN2_5_REGULAR_TOKENS, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id
    )
    return model


def build_qwen_shape(out: Path, tiny_world: Path, progress=print) -> dict:
    """Student (base) and teacher (instruct) of Qwen2.5-0.5B's shape, float32, plus the tiny world's data."""
    import time

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = out / "data"
    data.mkdir(exist_ok=True)
    for split in ("train", "eval"):
        shutil.copyfile(tiny_world / "data" / f"{split}.jsonl", data / f"{split}.jsonl")
    texts = [
        value
        for line in (data / "train.jsonl").read_text().splitlines()
        for key, value in json.loads(line).items()
        if key != "lang" and isinstance(value, str)
    ]
    end_of_text, end_of_turn = QWEN2_5_REGULAR_TOKENS, QWEN2_5_REGULAR_TOKENS + 2
    # The paper's pair: a base student (stops at <|endoftext|>), an instruct teacher (stops at either).
    for name, role, seed, eos_ids in (
        ("student", "base", 1, [end_of_text]),
        ("teacher", "instruct", 2, [end_of_turn, end_of_text]),
    ):
        tokenizer = qwen_shaped_tokenizer(texts, role)
        model = _random_model(seed, tokenizer, eos_ids)
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
        params = sum(p.numel() for p in model.parameters())
        progress(f"[qwen-shape] {name}: {params / 1e6:.0f}M parameters, vocabulary {QWEN2_5_VOCAB:,} ({role})")
        del model
    info = {"format_version": FORMAT_VERSION, "shape": "Qwen2.5-0.5B", "seconds": time.perf_counter() - started}
    (out / "world.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def ensure_qwen_shape(tiny_world: Path, progress=print) -> Path:
    """The cached world, built once (about a minute and 4 GB of disk)."""
    from orchestrator.config import qwen_shape_dir

    out = qwen_shape_dir()
    marker = out / "world.json"
    if marker.is_file() and json.loads(marker.read_text()).get("format_version") == FORMAT_VERSION:
        return out
    build_qwen_shape(out, tiny_world, progress)
    return out
