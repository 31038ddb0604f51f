"""The Qwen2.5-shaped world's tokenizer: Qwen's id layout and chat template, built offline."""

from __future__ import annotations

import pytest

from orchestrator.tiny_world.qwen_shape import (
    QWEN2_5_ADDED_TOKENS,
    QWEN2_5_REGULAR_TOKENS,
    qwen_chat_template,
    qwen_shaped_tokenizer,
)
from orchestrator.tokens import encode_prompt, encode_response

TEXTS = ["Berapa 3 tambah 4?", "Jawaban: 7", "What is 12 minus 5?", "Answer: 7", "ทดสอบ 123"] * 20


@pytest.fixture(scope="module")
def tokenizers():
    return {role: qwen_shaped_tokenizer(TEXTS, role) for role in ("base", "instruct")}


def test_ids_and_special_tokens_follow_qwen2_5(tokenizers, tmp_path):
    from transformers import AutoTokenizer

    base, instruct = tokenizers["base"], tokenizers["instruct"]
    assert len(base) == QWEN2_5_REGULAR_TOKENS + len(QWEN2_5_ADDED_TOKENS) == 151_665
    assert base.get_vocab() == instruct.get_vocab()
    assert [base.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        151_643,
        151_644,
        151_645,
    ]
    assert base.convert_tokens_to_ids("<|file_sep|>") == 151_664
    assert (base.eos_token, instruct.eos_token, base.pad_token) == ("<|endoftext|>", "<|im_end|>", "<|endoftext|>")
    instruct.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(instruct) and reloaded.chat_template == qwen_chat_template()


def test_prompts_render_through_qwens_template_and_responses_end_the_turn(tokenizers):
    instruct = tokenizers["instruct"]
    ids = encode_prompt(instruct, "Berapa 3 tambah 4?")
    text = instruct.decode(ids)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nBerapa 3 tambah 4?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert encode_response(instruct, "Jawaban: 7")[-1] == 151_645
    assert max(ids) < 151_936


def test_a_base_student_and_an_instruct_teacher_need_end_of_turn(tokenizers, tmp_path):
    from transformers import Qwen2Config

    from orchestrator.startup import StartupError, check_shared_vocabulary, load_tokenizer

    for name, role in (("student", "base"), ("teacher", "instruct")):
        tokenizers[role].save_pretrained(tmp_path / name)
        Qwen2Config(vocab_size=151_936).save_pretrained(tmp_path / name)
    student, teacher = str(tmp_path / "student"), str(tmp_path / "teacher")
    with pytest.raises(StartupError, match="eos_token differs.*models.end_of_turn"):
        check_shared_vocabulary(student, teacher)
    check_shared_vocabulary(student, teacher, end_of_turn="<|im_end|>")
    assert load_tokenizer(student).eos_token_id == 151_643
    assert load_tokenizer(student, "<|im_end|>").eos_token_id == 151_645
    with pytest.raises(StartupError, match="not a token"):
        load_tokenizer(student, "<|no_such_token|>")


@pytest.mark.parametrize("mode", ["english", "multilingual", "crosslingual", "mix", "privileged", "none"])
def test_every_verbalizer_mode_renders_through_qwens_template(tokenizers, mode):
    from orchestrator.data import Example
    from orchestrator.steps import build_prompts
    from orchestrator.verbalizer import Verbalizer

    instruct = tokenizers["instruct"]
    row = Example("Berapa 3 tambah 4?", "Jawaban: 7", "id", prompt_en="What is 3 plus 4?", response_en="Answer: 7")
    verbalizer = None if mode == "none" else Verbalizer(mode, ["id", "th"], seed=0)
    prompts = build_prompts([row], instruct, verbalizer)
    header = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    for ids in prompts.x + prompts.z + prompts.p_z:
        text = instruct.decode(ids)
        assert text.startswith(header + "<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert text.count("<|im_start|>") == 3  # one system, one user turn, the assistant header: nothing nested
    if verbalizer is not None:
        assert "Jawaban: 7" in instruct.decode(prompts.z[0]) or "Answer: 7" in instruct.decode(prompts.z[0])
    assert prompts.y[0][-1] == instruct.convert_tokens_to_ids("<|im_end|>")


def test_the_shipped_template_is_qwen2_5s_verbatim():
    import hashlib

    digest = hashlib.sha256(qwen_chat_template().encode()).hexdigest()
    assert digest == "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"
