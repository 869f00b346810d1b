"""Write the shipped workload: examples/agents.jsonl (agent specs) and examples/tasks.jsonl.

Deterministic given --seed. The mix is sized for a 135M model: about 30% JSON extraction with a
schema, 30% classification with a fixed label set, 25% short factual answers with a known
expected answer, 15% free-form. Every line is validated with the project's pydantic models
before anything is written.

    python scripts/make_tasks.py --seed 7 --tasks 320 --agents 32 --out examples
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.models import AgentSpec, GenerationParams, Task, TaskKind

MIX = {TaskKind.JSON: 0.30, TaskKind.LABEL: 0.30, TaskKind.ANSWER: 0.25, TaskKind.FREE: 0.15}
DEADLINE_S = {TaskKind.JSON: 20.0, TaskKind.LABEL: 10.0, TaskKind.ANSWER: 10.0, TaskKind.FREE: 30.0}
# Answer sizes: a label or a short answer needs a few tokens; a cut-off answer is healed (tier 1).
MAX_TOKENS = {TaskKind.JSON: 64, TaskKind.LABEL: 8, TaskKind.ANSWER: 16, TaskKind.FREE: 48}

FIRST = ["Maria", "John", "Aisha", "Kenji", "Lena", "Omar", "Sofia", "Peter", "Chen", "Nadia"]
LAST = ["Lopez", "Smith", "Khan", "Tanaka", "Fischer", "Haddad", "Rossi", "Novak", "Wang", "Silva"]
CITIES = ["Madrid", "Paris", "Berlin", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Toronto", "Seoul"]
ROLES = [
    "a patient support agent",
    "a terse data clerk",
    "a cheerful travel helper",
    "a careful bookkeeper",
    "a friendly teacher",
    "a calm customer service agent",
    "a curious science tutor",
    "a practical office assistant",
]
STYLES = ["Answer briefly.", "Follow the requested format exactly.", "Be precise and short."]

SENTIMENT = {
    "positive": [
        "The food was delicious and the staff were friendly.",
        "I love this phone, the battery lasts all day.",
        "What a wonderful movie, I smiled the whole time.",
        "The hotel room was clean, quiet and comfortable.",
        "Great service, fast delivery, I am very happy.",
        "This book is fantastic and beautifully written.",
    ],
    "negative": [
        "The food was cold and the waiter was rude.",
        "I hate this phone, it breaks every week.",
        "What a boring movie, I almost fell asleep.",
        "The hotel room was dirty and very noisy.",
        "Terrible service, my order arrived late and broken.",
        "This book is dull and badly written.",
    ],
}
TOPIC = {
    "sports": [
        "The striker scored twice in the final minutes of the match.",
        "She won the marathon in record time.",
        "The basketball team lost their third game in a row.",
    ],
    "food": [
        "Add garlic and olive oil, then bake the bread for twenty minutes.",
        "This soup tastes great with fresh tomatoes and basil.",
        "The new bakery sells warm croissants every morning.",
    ],
    "weather": [
        "Heavy rain and strong wind are expected tomorrow.",
        "It will be sunny and warm all weekend.",
        "Snow fell all night and the roads are icy.",
    ],
    "tech": [
        "The new laptop has a faster processor and more memory.",
        "Update your phone to fix the security bug.",
        "The app crashes when I upload a large file.",
    ],
}
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Spain": "Madrid",
    "Russia": "Moscow",
    "China": "Beijing",
    "England": "London",
    "Egypt": "Cairo",
}
COLOURS = {
    "the sky on a clear day": "blue",
    "grass": "green",
    "snow": "white",
    "a ripe banana": "yellow",
    "coal": "black",
    "a ripe tomato": "red",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "day": "night",
    "fast": "slow",
    "happy": "sad",
    "open": "closed",
    "light": "dark",
}
FREE = [
    "Write two sentences about why sleep matters.",
    "Give one practical tip for saving money on groceries.",
    "Describe a quiet morning in a small town in two sentences.",
    "Explain in two sentences why people enjoy music.",
    "Write a short, friendly note thanking a colleague for their help.",
    "Suggest one simple way to stay healthy at work.",
    "Describe your favourite season in two sentences.",
]

Draft = dict[str, Any]  # the kind-specific fields of one task


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _date(rng: random.Random) -> str:
    return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _schema(fields: dict[str, str]) -> dict[str, Any]:
    props = {k: {"type": t} for k, t in fields.items()}
    return {"type": "object", "properties": props, "required": list(fields)}


def _json_task(rng: random.Random) -> Draft:
    name, city, date = _name(rng), rng.choice(CITIES), _date(rng)
    shape = rng.randrange(3)
    if shape == 0:
        amount = rng.randint(5, 500)
        sentence = f"{name} paid {amount} dollars in {city} on {date}."
        truth: dict[str, Any] = {"name": name, "city": city, "amount": amount, "date": date}
        types = {"name": "string", "city": "string", "amount": "number", "date": "string"}
    elif shape == 1:
        age = rng.randint(18, 80)
        sentence = f"{name} is {age} years old and lives in {city}."
        truth = {"name": name, "age": age, "city": city}
        types = {"name": "string", "age": "integer", "city": "string"}
    else:
        nights = rng.randint(1, 9)
        sentence = f"{name} booked {nights} nights at a hotel in {city} starting {date}."
        truth = {"name": name, "city": city, "nights": nights, "date": date}
        types = {"name": "string", "city": "string", "nights": "integer", "date": "string"}
    keys = ", ".join(f"{k} ({t})" for k, t in types.items())
    prompt = (
        f"Extract the facts from the sentence. Answer only with a JSON object with the keys "
        f"{keys}. Dates as YYYY-MM-DD.\nSentence: {sentence}"
    )
    return {"prompt": prompt, "schema": _schema(types), "expected": json.dumps(truth)}


def _label_task(rng: random.Random) -> Draft:
    table, what = (
        (SENTIMENT, "sentiment of this review") if rng.random() < 0.5 else (TOPIC, "topic")
    )
    label = rng.choice(sorted(table))
    labels = tuple(table)
    options = ", ".join(labels[:-1]) + " or " + labels[-1]
    text = rng.choice(table[label])
    prompt = f"Classify the {what}. Answer with one word: {options}.\nText: {text}"
    return {"prompt": prompt, "labels": labels, "expected": label}


def _answer_task(rng: random.Random) -> Draft:
    shape = rng.randrange(4)
    if shape == 0:
        country, city = rng.choice(sorted(CAPITALS.items()))
        return {
            "prompt": f"What is the capital of {country}? Answer with one word.",
            "expected": city,
        }
    if shape == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return {"prompt": f"What is {a} + {b}? Answer with a number only.", "expected": str(a + b)}
    if shape == 2:
        thing, colour = rng.choice(sorted(COLOURS.items()))
        return {"prompt": f"What colour is {thing}? Answer with one word.", "expected": colour}
    word, opposite = rng.choice(sorted(OPPOSITES.items()))
    return {
        "prompt": f"What is the opposite of '{word}'? Answer with one word.",
        "expected": opposite,
    }


def _free_task(rng: random.Random) -> Draft:
    return {"prompt": rng.choice(FREE)}


MAKERS: dict[TaskKind, Callable[[random.Random], Draft]] = {
    TaskKind.JSON: _json_task,
    TaskKind.LABEL: _label_task,
    TaskKind.ANSWER: _answer_task,
    TaskKind.FREE: _free_task,
}


def make_agents(n: int, rng: random.Random) -> list[AgentSpec]:
    specs = []
    for i in range(n):
        persona = f"You are {rng.choice(ROLES)}. {rng.choice(STYLES)}"
        params = GenerationParams(temperature=0.7, top_p=0.95, max_tokens=96, seed=i)
        specs.append(
            AgentSpec(
                agent_id=f"agent-{i:03d}",
                system_prompt=persona,
                priority=rng.randint(1, 9),
                generation=params,
            )
        )
    return specs


def _kinds(n: int, rng: random.Random) -> list[TaskKind]:
    kinds = [k for k, share in MIX.items() for _ in range(round(n * share))]
    kinds = (kinds + [TaskKind.FREE] * n)[:n]
    rng.shuffle(kinds)
    return kinds


def make_tasks(n: int, agents: list[AgentSpec], rng: random.Random) -> list[Task]:
    tasks = []
    for i, kind in enumerate(_kinds(n, rng)):
        draft = MAKERS[kind](rng)
        line = {
            "task_id": f"task-{i:05d}",
            "agent_id": agents[i % len(agents)].agent_id,
            "kind": kind.value,
            "priority": rng.randint(0, 9),
            "deadline_s": DEADLINE_S[kind],
            "max_tokens": MAX_TOKENS[kind],
            **draft,
        }
        tasks.append(Task.model_validate(line))
    return tasks


def _task_line(task: Task) -> str:
    line = task.model_dump_json(by_alias=True, exclude_none=True)
    Task.model_validate(json.loads(line))  # what we write must read back
    return line


def _agent_line(spec: AgentSpec) -> str:
    line = spec.model_dump_json()
    AgentSpec.model_validate(json.loads(line))
    return line


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--tasks", type=int, default=320)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("examples"))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    agents = make_agents(args.agents, rng)
    tasks = make_tasks(args.tasks, agents, rng)
    write(args.out / "agents.jsonl", [_agent_line(a) for a in agents])
    write(args.out / "tasks.jsonl", [_task_line(t) for t in tasks])
    print(f"wrote {len(agents)} agents, {len(tasks)} tasks to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
