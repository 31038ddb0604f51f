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


def _problem_shapes() -> list[tuple[str, int, int]]:
    """(op, a, b): a two-digit number and a digit with no carry and no borrow (a ± b stays in a's ten)."""
    shapes = []
    for a in range(10, 100):
        for b in range(1, 10):
            if a % 10 + b <= 9:
                shapes.append(("add", a, b))
            if a % 10 >= b:
                shapes.append(("sub", a, b))
    return shapes


PROBLEM_SHAPES = _problem_shapes()


def sample_problem(rng: random.Random) -> Problem:
    """A two-digit a and a one-digit b, added or taken away within a's ten: the answer is one of 90 equally
    likely numbers (10..99), so guessing scores 1.1% (`chance_exact_match`).

    The world before this one (a one digit, b "two" or "three") had 11 answers, so chance was 9%. Written-out
    second operands and carries were tried here too: a 2M teacher learnt them too slowly for a CPU build (12.5%
    after 2,000 steps of 32). What is left needs copying both numbers, the operation word of eight languages
    and one digit fact.
    """
    op, a, b = rng.choice(PROBLEM_SHAPES)
    return Problem(op, a, b, rng.randrange(6), rng.randrange(6), rng.randrange(3))


def answer_distribution() -> dict[int, float]:
    """P(answer) under `sample_problem`, enumerated exactly."""
    distribution: dict[int, float] = {}
    for op, a, b in PROBLEM_SHAPES:
        answer = Problem(op, a, b, 0, 0, 0).answer
        distribution[answer] = distribution.get(answer, 0.0) + 1 / len(PROBLEM_SHAPES)
    return distribution


def chance_exact_match(answers: list[str] | None = None) -> float:
    """Exact match of the best constant guess: over the task's distribution, or over the given answers."""
    if answers is None:
        return max(answer_distribution().values())
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return max(counts.values()) / len(answers)


def render_prompt(templates: dict, problem: Problem, lang: str) -> str:
    entry = templates[lang]
    item = entry["items"][problem.item]
    return entry[problem.op][problem.template].format(
        name=entry["names"][problem.name],
        qa=item["counted"].format(n=problem.a),
        qb=item["counted"].format(n=problem.b),
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
    """Train and eval (problem, language) pairs; none appears in both.

    Eval answers go round the 90 answers in turn (one shuffled order, continued from language to language), so every answer is as frequent
    as the eval set's size allows and its chance level (the best constant guess) is 1/90 up to rounding, not
    1/90 plus sampling noise (2.0% on a random draw of 1,600 rows, 2.8% on 320).
    """
    rng = random.Random(seed)
    shapes_by_answer: dict[int, list[tuple[str, int, int]]] = {}
    for shape in PROBLEM_SHAPES:
        shapes_by_answer.setdefault(Problem(*shape, 0, 0, 0).answer, []).append(shape)
    answer_order = rng.sample(sorted(shapes_by_answer), len(shapes_by_answer))

    def eval_problem(index: int) -> Problem:
        shape = rng.choice(shapes_by_answer[answer_order[index % len(answer_order)]])
        return Problem(*shape, rng.randrange(6), rng.randrange(6), rng.randrange(3))

    seen: set[tuple[Problem, str]] = set()
    splits: list[list[tuple[Problem, str]]] = []
    for split, count in (("eval", eval_per_language), ("train", train_per_language)):
        chosen = []
        for lang_index, lang in enumerate(LANGUAGES):
            made = 0
            while made < count:
                problem = eval_problem(lang_index * count + made) if split == "eval" else sample_problem(rng)
                key = (problem, lang)
                if key not in seen:
                    seen.add(key)
                    chosen.append(key)
                    made += 1
        rng.shuffle(chosen)
        splits.append(chosen)
    eval_pairs, train_pairs = splits
    return train_pairs, eval_pairs
