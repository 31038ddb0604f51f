"""Arithmetic word problems with verifiable answers, written with natural templates in eight languages.

A problem is language-free (operation, operands, name, item, template); rendering it in a language gives
the prompt and the response `"a + b = c. <answer sentence>"`, so every row also has its English version.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.config import LANGUAGES

TEMPLATES = Path(__file__).with_name("task_templates.yaml")


@dataclass(frozen=True)
class Problem:
    op: str  # "add" | "sub"
    a: int
    b: int
    name: int
    item: int
    template: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "add" else self.a - self.b


def load_templates(path: Path = TEMPLATES) -> dict:
    return yaml.safe_load(path.read_text())


def sample_problem(rng: random.Random) -> Problem:
    """a is a digit (2..9; 5..9 when subtracting, so the difference is ≥ 2), b a number word (two or three).

    A first prompt with two digit operands asked a 2M-parameter teacher to learn ordinal copying and a
    100-fact table: after 1,200 steps it was right 14% of the time. One digit number plus one number word
    is learnt in minutes, and still needs the language's number words and operation words.
    """
    op = rng.choice(("add", "sub"))
    a, b = rng.randint(2 if op == "add" else 5, 9), rng.choice((2, 3))
    return Problem(op, a, b, rng.randrange(6), rng.randrange(6), rng.randrange(3))


def render_prompt(templates: dict, problem: Problem, lang: str) -> str:
    entry = templates[lang]
    item = entry["items"][problem.item]
    return entry[problem.op][problem.template].format(
        name=entry["names"][problem.name],
        qa=item["counted"].format(n=problem.a),
        qb=item["counted"].format(n=entry["number_words"][problem.b]),
        item=item["bare"],
    )


def render_response(templates: dict, problem: Problem, lang: str) -> str:
    sign = "+" if problem.op == "add" else "-"
    return f"{problem.a} {sign} {problem.b} = {problem.answer}. " + templates[lang]["answer"].format(c=problem.answer)


def make_rows(problems: list[tuple[Problem, str]], templates: dict) -> list[dict]:
    return [
        {
            "prompt": render_prompt(templates, p, lang),
            "response": render_response(templates, p, lang),
            "lang": lang,
            "prompt_en": render_prompt(templates, p, "en"),
            "response_en": render_response(templates, p, "en"),
            "answer": str(p.answer),
        }
        for p, lang in problems
    ]


def split_problems(seed: int, train_per_language: int, eval_per_language: int):
    """Train and eval (problem, language) pairs; none appears in both."""
    rng = random.Random(seed)
    seen: set[tuple[Problem, str]] = set()
    splits: list[list[tuple[Problem, str]]] = []
    for count in (eval_per_language, train_per_language):
        chosen = []
        for lang in LANGUAGES:
            made = 0
            while made < count:
                key = (sample_problem(rng), lang)
                if key not in seen:
                    seen.add(key)
                    chosen.append(key)
                    made += 1
        rng.shuffle(chosen)
        splits.append(chosen)
    eval_pairs, train_pairs = splits
    return train_pairs, eval_pairs
