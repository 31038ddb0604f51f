import collections

import pytest

from orchestrator.config import LANGUAGES
from orchestrator.verbalizer import MODES, Verbalizer, VerbalizerTemplates

PROMPT, RESPONSE = "QUESTION_TEXT", "DEMO_TEXT"


@pytest.fixture(scope="module")
def templates():
    return VerbalizerTemplates.load()


def test_templates_cover_every_language_and_name_every_target(templates):
    assert set(templates.languages) == set(LANGUAGES)
    for lang, entry in templates.languages.items():
        assert set(entry.language_names) == set(LANGUAGES), lang
        assert (
            "{question}" in entry.teacher
            and "{demonstration}" in entry.teacher
            and "{target_language}" in entry.teacher
        )
        assert "{question}" in entry.student and "{target_language}" in entry.student
        assert "{demonstration}" not in entry.student, "the student must not see the demonstration"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_none_mode_passes_the_prompt_through(templates, lang):
    out = Verbalizer("none", list(LANGUAGES), templates=templates)(PROMPT, RESPONSE, lang)
    assert (out.teacher_prompt, out.student_prompt, out.target_lang) == (PROMPT, PROMPT, lang)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_english_mode_is_sdft(templates, lang):
    out = Verbalizer("english", list(LANGUAGES), templates=templates)(PROMPT, RESPONSE, lang)
    assert out.teacher_prompt == templates.sdft_english_teacher.format(question=PROMPT, demonstration=RESPONSE)
    assert out.student_prompt == PROMPT
    assert out.target_lang == lang


@pytest.mark.parametrize("lang", LANGUAGES)
def test_multilingual_mode_uses_the_sample_language_for_template_and_target(templates, lang):
    out = Verbalizer("multilingual", list(LANGUAGES), templates=templates)(PROMPT, RESPONSE, lang)
    entry = templates.languages[lang]
    assert out.target_lang == lang
    assert out.teacher_prompt == entry.teacher.format(
        question=PROMPT, demonstration=RESPONSE, target_language=entry.language_names[lang]
    )
    assert out.student_prompt == entry.student.format(question=PROMPT, target_language=entry.language_names[lang])
    assert RESPONSE in out.teacher_prompt and RESPONSE not in out.student_prompt


@pytest.mark.parametrize("lang", LANGUAGES)
def test_crosslingual_target_never_equals_the_sample_language(templates, lang):
    verbalizer = Verbalizer("crosslingual", [code for code in LANGUAGES if code != "en"], templates=templates, seed=1)
    targets = collections.Counter(verbalizer(PROMPT, RESPONSE, lang).target_lang for _ in range(400))
    assert lang not in targets
    expected = set(LANGUAGES) - {lang}  # training languages plus English, without the sample's own
    assert set(targets) == expected
    assert min(targets.values()) > 400 / len(expected) / 2, "l_z should be uniform"
    out = verbalizer(PROMPT, RESPONSE, lang)
    entry = templates.languages[lang]  # the template is written in the sample's language
    assert out.student_prompt == entry.student.format(
        question=PROMPT, target_language=entry.language_names[out.target_lang]
    )


def test_crosslingual_can_leave_english_out(templates):
    verbalizer = Verbalizer("crosslingual", ["id", "th"], include_english_target=False, templates=templates)
    assert {verbalizer(PROMPT, RESPONSE, "id").target_lang for _ in range(50)} == {"th"}


def test_crosslingual_without_any_other_language_fails_clearly(templates):
    verbalizer = Verbalizer("crosslingual", ["en"], templates=templates)
    with pytest.raises(ValueError, match="no crosslingual target"):
        verbalizer(PROMPT, RESPONSE, "en")


def test_mix_mode_is_half_multilingual_half_crosslingual(templates):
    verbalizer = Verbalizer("mix", list(LANGUAGES), templates=templates, seed=3)
    same = sum(verbalizer(PROMPT, RESPONSE, "th").target_lang == "th" for _ in range(1000))
    assert 400 < same < 600


def test_unknown_mode_is_rejected(templates):
    with pytest.raises(ValueError, match="verbalizer.mode"):
        Verbalizer("bogus", ["en"], templates=templates)


def test_all_modes_are_known():
    assert set(MODES) == {"none", "english", "multilingual", "crosslingual", "mix", "privileged"}


def test_privileged_mode_gives_the_teacher_the_english_problem_and_answer(templates):
    verbalizer = Verbalizer("privileged", list(LANGUAGES), templates=templates)
    out = verbalizer(PROMPT, RESPONSE, "th", "Ali has 2 apples.", "2 + 1 = 3. The answer is 3.")
    assert out.student_prompt == PROMPT and out.target_lang == "th"
    assert PROMPT in out.teacher_prompt and "Ali has 2 apples." in out.teacher_prompt
    assert "The answer is 3." in out.teacher_prompt and RESPONSE not in out.teacher_prompt
    with pytest.raises(ValueError, match="English translation"):
        verbalizer(PROMPT, RESPONSE, "th")
