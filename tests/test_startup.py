import json
import shutil

import pytest

from orchestrator.startup import StartupError, check_shared_vocabulary


def test_shared_vocabulary_passes_for_the_tiny_world(tiny_world):
    check_shared_vocabulary(str(tiny_world / "student"), str(tiny_world / "teacher"))


def test_a_different_tokenizer_stops_the_run_naming_both_models(tiny_world, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other-teacher"
    shutil.copytree(tiny_world / "teacher", other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(StartupError) as error:
        check_shared_vocabulary(str(tiny_world / "student"), str(other))
    message = str(error.value)
    assert str(tiny_world / "student") in message and str(other) in message and "token ids differ" in message


def test_a_different_logit_width_stops_the_run(tiny_world, tmp_path):
    other = tmp_path / "wide-teacher"
    shutil.copytree(tiny_world / "teacher", other)
    config = json.loads((other / "config.json").read_text())
    config["vocab_size"] += 64
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(StartupError, match="logit width differs"):
        check_shared_vocabulary(str(tiny_world / "student"), str(other))


def test_models_load_by_name_from_the_hf_cache_offline(tiny_world, tmp_path, monkeypatch):
    """A real model id resolves through the HF cache layout (models--org--name/snapshots/REV), no network."""
    import huggingface_hub
    from transformers import AutoModelForCausalLM

    from orchestrator.startup import load_tokenizer

    hub = tmp_path / "hub"
    for name in ("student", "teacher"):
        repo = hub / f"models--dudi--tiny-{name}"
        shutil.copytree(tiny_world / name, repo / "snapshots" / "abc123")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    check_shared_vocabulary("dudi/tiny-student", "dudi/tiny-teacher")
    assert load_tokenizer("dudi/tiny-student").chat_template
    assert AutoModelForCausalLM.from_pretrained("dudi/tiny-student").config.vocab_size > 0
