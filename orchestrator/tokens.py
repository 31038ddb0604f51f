"""Turns text into the token ids every component speaks: chat-templated prompts, EOS-terminated responses."""

from __future__ import annotations


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The user turn plus the assistant header, as the model sees it at generation time."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def encode_response(tokenizer, text: str) -> list[int]:
    """The response tokens followed by EOS, which ends the assistant turn."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
