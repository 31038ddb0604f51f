"""The cross-lingual verbalizer v(x, y, l, l_z) → (teacher prompt z, student prompt p_z).

Modes (DESIGN.md): `none` z = p_z = x; `english` the SDFT English template for z, p_z = x; `multilingual`
template in l, l_z = l; `crosslingual` template in l, l_z uniform over the target set without l;
`mix` half multilingual, half crosslingual; `privileged` (COPSD) z = x plus its English translation and English
reference answer, p_z = x. Templates are data (`verbalizer_templates.yaml`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_TEMPLATES = Path(__file__).with_name("verbalizer_templates.yaml")
MODES = ("none", "english", "multilingual", "crosslingual", "mix", "privileged")


@dataclass(frozen=True)
class LanguageTemplates:
    language_names: dict[str, str]
    teacher: str
    student: str


@dataclass(frozen=True)
class VerbalizerTemplates:
    sdft_english_teacher: str
    copsd_teacher: str
    languages: dict[str, LanguageTemplates]

    @classmethod
    def load(cls, path: str | Path | None = None) -> VerbalizerTemplates:
        raw = yaml.safe_load(Path(path or DEFAULT_TEMPLATES).read_text())
        languages = {code: LanguageTemplates(**entry) for code, entry in raw["languages"].items()}
        return cls(
            sdft_english_teacher=raw["sdft_english_teacher"], copsd_teacher=raw["copsd_teacher"], languages=languages
        )


@dataclass(frozen=True)
class Verbalized:
    teacher_prompt: str  # z
    student_prompt: str  # p_z
    target_lang: str  # l_z


class Verbalizer:
    """State: the mode, the templates, the crosslingual target set and a seeded RNG for l_z."""

    def __init__(
        self,
        mode: str,
        training_languages: list[str],
        include_english_target: bool = True,
        templates: VerbalizerTemplates | None = None,
        seed: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"verbalizer.mode {mode!r} is not one of {MODES}")
        self.mode = mode
        self.templates = templates or VerbalizerTemplates.load()
        missing = sorted(set(training_languages) - set(self.templates.languages))
        if missing and mode in ("multilingual", "crosslingual", "mix"):
            raise ValueError(f"verbalizer templates have no entry for languages {missing}")
        targets = set(training_languages) | ({"en"} if include_english_target else set())
        self.targets = sorted(targets)
        self.rng = random.Random(seed)

    def reseed(self, key: int) -> None:
        """The random choices of one batch follow from `key` alone (the run's seed and the batch's rows), so a batch
        is verbalized the same however many were prepared before it (asynchronous pipeline, resumed runs)."""
        self.rng.seed(key)

    def crosslingual_targets(self, lang: str) -> list[str]:
        return [t for t in self.targets if t != lang]

    def __call__(
        self, prompt: str, response: str, lang: str, prompt_en: str | None = None, response_en: str | None = None
    ) -> Verbalized:
        mode = self.mode
        if mode == "mix":
            mode = "multilingual" if self.rng.random() < 0.5 else "crosslingual"
        if mode == "none":
            return Verbalized(prompt, prompt, lang)
        if mode == "privileged":
            if prompt_en is None or response_en is None:
                raise ValueError(
                    "verbalizer.mode=privileged (COPSD) needs the English translation and answer of every row "
                    "(data.prompt_en_column, data.response_en_column)"
                )
            z = self.templates.copsd_teacher.format(
                question=prompt, question_en=prompt_en, demonstration_en=response_en
            )
            return Verbalized(z, prompt, lang)
        if mode == "english":
            z = self.templates.sdft_english_teacher.format(question=prompt, demonstration=response)
            return Verbalized(z, prompt, lang)
        target = lang
        if mode == "crosslingual":
            choices = self.crosslingual_targets(lang)
            if not choices:
                raise ValueError(f"no crosslingual target language for {lang!r}: the target set is {self.targets}")
            target = self.rng.choice(choices)
        return render(self.templates, prompt, response, lang, target)


def render(templates: VerbalizerTemplates, prompt: str, response: str, lang: str, target: str) -> Verbalized:
    """The teacher and student prompts written in `lang` that ask for a response in `target`."""
    entry = templates.languages[lang]
    target_name = entry.language_names[target]
    z = entry.teacher.format(question=prompt, demonstration=response, target_language=target_name)
    p_z = entry.student.format(question=prompt, target_language=target_name)
    return Verbalized(z, p_z, target)
