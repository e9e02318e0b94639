"""Collect real, unconstrained outputs of SmolLM2-135M-Instruct for the repair test data.

Run once by hand (not by pytest): ``.venv/bin/python tests/data/repair_cases/collect_smollm.py
[schema|example]`` (``example`` shows an example answer instead of the schema).
It prompts the model for JSON with no grammar constraint, so the text is what a server
without structured output would return; each output is written as ``smollm_NN.json`` with
``expected`` left as ``"?"`` for a person to label after reading it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

PROMPTS: list[tuple[str, str]] = [
    ("schemas.intent:Intent", "Add a --verbose flag to cli.py"),
    ("schemas.intent:Intent", "Why does test_parser fail?"),
    ("schemas.intent:Intent", "Create docs/usage.md describing the CLI"),
    ("schemas.intent:Intent", "Rename the function load to read in io.py"),
    ("schemas.intent:Intent", "Run the tests in tests/schema"),
    ("schemas.intent:Intent", "Explain what a circuit breaker is"),
    ("schemas.reflection:Reflection", "Review this answer: 'Paris is the capital of Spain.'"),
    ("schemas.reflection:Reflection", "Critique this code: def add(a, b): return a - b"),
    ("schemas.reflection:Reflection", "Assess the output 'All 12 tests passed.'"),
    ("person.json", "Describe Ada Lovelace as a person record."),
    ("person.json", "Describe a fictional engineer named Bo, aged 31."),
    ("person.json", "Give me a person: Grace Hopper, admiral, born 1906."),
    ("ticket.json", "File a ticket: the login page crashes on submit, high priority."),
    ("ticket.json", "Ticket for a typo in the README, low priority, tag docs."),
    ("ticket.json", "Open a ticket: API latency spiked, medium, tags perf and api."),
]


EXAMPLES: dict[str, dict] = {
    "schemas.intent:Intent": {"kind": "edit_code", "targets": ["app.py"], "confidence": 0.8,
                              "rationale": "The user wants a change in app.py."},
    "schemas.reflection:Reflection": {"verdict": "revise", "issues": [
        {"severity": "medium", "description": "The claim is unsupported."}],
        "next_action": "Cite a source.", "score": 5},
    "person.json": {"name": "Alan Turing", "age": 41, "occupation": "mathematician"},
    "ticket.json": {"title": "Crash on start", "priority": "high", "tags": ["app"]},
}


def schema_for(ref: str) -> dict:
    if ref.endswith(".json"):
        return json.loads((HERE / "schemas" / ref).read_text())
    from structgen.schema import compile_output
    from structgen.schema.specs import load_spec

    return compile_output(load_spec(ref)).to_json_schema()


def main(style: str = "schema") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from structgen.backends.local.models import default_model_dir

    torch.manual_seed(0)
    model_dir = default_model_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    n = 0
    for sampled in (False,) if style == "example" else (False, True):
        for ref, prompt in PROMPTS:
            schema = schema_for(ref)
            system = ("Answer with one JSON object that follows this JSON Schema, and nothing "
                      "else:\n" + json.dumps(schema))
            if style == "example":  # an example answer makes the model write almost-JSON
                system = ("Reply in JSON only, in exactly this format:\n"
                          + json.dumps(EXAMPLES[ref]))
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            out = model.generate(**ids, max_new_tokens=96, do_sample=sampled,
                                 temperature=0.8 if sampled else None, top_p=None, top_k=None)
            text = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
            case = {"source": "smollm2-135m-instruct, unconstrained, "
                    + ("sampled t=0.8" if sampled else "greedy") + ", max_new_tokens=96",
                    "prompt_style": style, "schema": ref, "prompt": prompt, "text": text,
                    "expected": "?"}
            prefix = "smollm" if style == "schema" else "smollm_ex"
            (HERE / f"{prefix}_{n:02d}.json").write_text(json.dumps(case, indent=2) + "\n")
            print(n, repr(text[:120]), flush=True)
            n += 1


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "schema")
