"""Grammar-constrained decoding in the engine: with random weights, the output of a JSON schema,
regex or lark constraint is valid by construction; a complete grammar ends the request; with
thinking the constraint starts after ``</think>``; unconstrained rows beside constrained ones are
unchanged bit for bit; a bad grammar is InvalidInput. The model is a tiny random GLM-4 over the
default bundle's tokenizer (its vocabulary is what constraints compile against)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch
from tokenizers import Tokenizer
from transformers import Glm4Config
from transformers import Glm4ForCausalLM as HfGlm4

from bundle.build import TOKENIZER_FILE
from services.common.errors import InvalidInput
from services.decoder.constraint_spec import Constraint, ConstraintKind
from services.decoder.constraints import ConstraintCompiler
from services.decoder.engine import Engine
from services.decoder.grammars import phone_action_grammar
from services.decoder.model import Glm4ForCausalLM
from services.decoder.params import SamplingParams, StoppingParams
from services.decoder.types import GenerateRequest
from tests.decoder.conftest import TINY
from tests.decoder.engines import make_engine, run_all, tokens

VOCAB = 4096  # the model's logits: wider than the tokenizer's 4015 tokens, as real models pad
EOS = (0, 4, 6)  # <|endoftext|>, <|user|>, <|observation|>
END_THINK = 14  # </think>
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["calm", "busy"]},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "mood", "flags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Glm4ForCausalLM:
    path: Path = tmp_path_factory.mktemp("glm4-tokenizer-vocab")
    torch.manual_seed(0)
    config = Glm4Config(**{**TINY, "vocab_size": VOCAB, "eos_token_id": list(EOS)})
    HfGlm4(config).save_pretrained(path)
    return Glm4ForCausalLM.from_pretrained(path, torch.float32, torch.device("cpu"))


@pytest.fixture(scope="module")
def compiler() -> ConstraintCompiler:
    return ConstraintCompiler(TOKENIZER_FILE.read_text(), VOCAB, EOS[0])


@pytest.fixture
def engine(model: Glm4ForCausalLM, compiler: ConstraintCompiler) -> Engine:
    return make_engine(model, max_running=8, max_model_len=512, eos=EOS, constraints=compiler)


def text(ids: list[int]) -> str:
    return Tokenizer.from_file(str(TOKENIZER_FILE)).decode(ids, skip_special_tokens=True)


def request(
    rid: str,
    constraint: Constraint | None,
    seed: int = 0,
    temperature: float = 1.0,
    max_tokens: int = 200,
    **sampling,
) -> GenerateRequest:
    ids = torch.randint(20, 4000, (12,), generator=torch.Generator().manual_seed(seed))
    return GenerateRequest(
        rid,
        tuple(ids.tolist()),
        sampling=SamplingParams(temperature=temperature, seed=seed, **sampling),
        stopping=StoppingParams(max_tokens),
        constraint=constraint,
    )


def generate(engine: Engine, *requests: GenerateRequest) -> dict[str, list[int]]:
    for r in requests:
        engine.add(r)
    outputs = run_all(engine)
    for r in requests:
        assert outputs[r.request_id][-1].finish_reason is not None
    return {rid: tokens(outs) for rid, outs in outputs.items()}


def finished_by_grammar(ids: list[int]) -> str:
    """The text before the EOS the complete grammar forced."""
    assert ids[-1] == EOS[0], "the grammar ends the output with EOS"
    assert EOS[0] not in ids[:-1]
    return text(ids[:-1])


def test_json_schema_output_parses_and_validates_over_several_seeds(engine: Engine) -> None:
    schema = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))
    outs = generate(engine, *(request(f"s{seed}", schema, seed=seed) for seed in range(6)))
    documents = [json.loads(finished_by_grammar(ids)) for ids in outs.values()]
    for document in documents:
        jsonschema.validate(document, SCHEMA)
    assert len({json.dumps(d) for d in documents}) > 1  # random weights, really sampled


def test_json_object_output_is_an_object(engine: Engine) -> None:
    constraint = Constraint(ConstraintKind.JSON_OBJECT)
    out = generate(engine, request("o", constraint, temperature=0.0, max_tokens=400))["o"]
    if out[-1] == EOS[0]:  # else cut by max_tokens: an unbounded object may run long
        assert isinstance(json.loads(finished_by_grammar(out)), dict)
    else:
        assert text(out).startswith("{")


def test_a_regex_constraint(engine: Engine) -> None:
    pattern = r"[a-z]{3}-[0-9]{2,4}"
    constraint = Constraint(ConstraintKind.REGEX, pattern)
    outs = generate(engine, *(request(f"r{seed}", constraint, seed=seed) for seed in range(4)))
    for ids in outs.values():
        assert re.fullmatch(pattern, finished_by_grammar(ids))


def test_a_lark_grammar(engine: Engine) -> None:
    grammar = 'start: "move(" DIR ", " NUM ")"\nDIR: "up" | "down"\nNUM: /[1-9][0-9]?/\n'
    constraint = Constraint(ConstraintKind.LARK, grammar)
    outs = generate(engine, *(request(f"l{seed}", constraint, seed=seed) for seed in range(4)))
    for ids in outs.values():
        assert re.fullmatch(r"move\((up|down), [1-9][0-9]?\)", finished_by_grammar(ids))


def test_the_phone_action_grammar_gives_steps_the_agent_parses(engine: Engine) -> None:
    """What Open-AutoGLM's parse_action does with a step: a do() call's keywords read by
    ast.literal_eval, or finish(message="...")."""
    constraint = Constraint(ConstraintKind.LARK, phone_action_grammar(max_text_chars=10))
    outs = generate(engine, *(request(f"a{seed}", constraint, seed=seed) for seed in range(8)))
    steps = [finished_by_grammar(ids) for ids in outs.values()]
    for step in steps:
        call = ast.parse(step, mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        args = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        if call.func.id == "finish":
            assert list(args) == ["message"] and step == f'finish(message="{args["message"]}")'
            continue
        assert call.func.id == "do" and isinstance(args.pop("action"), str)
        for name in ("element", "start", "end"):
            point = args.pop(name, [0, 0])
            assert len(point) == 2 and all(0 <= v <= 999 for v in point)
        assert all(isinstance(v, str) for v in args.values())
    assert len(set(steps)) > 1


def test_with_thinking_the_constraint_starts_after_end_think(engine: Engine) -> None:
    """Free text until </think> (here forced by a bias), then the grammar; the bias cannot
    bring </think> back, since the grammar forbids it."""
    constraint = Constraint(ConstraintKind.REGEX, "[0-9]{4}", start_after_token_id=END_THINK)
    think = request("t", constraint, logit_bias=((END_THINK, 100.0),))
    out = generate(engine, think)["t"]
    assert out[0] == END_THINK
    assert re.fullmatch("[0-9]{4}", finished_by_grammar(out[1:]))


def test_before_its_start_token_a_constraint_changes_nothing(engine: Engine) -> None:
    never = ((END_THINK, -100.0),)
    constraint = Constraint(ConstraintKind.REGEX, "[0-9]{4}", start_after_token_id=END_THINK)
    free = generate(engine, request("f", None, temperature=0, max_tokens=20, logit_bias=never))
    waiting = request("w", constraint, temperature=0, max_tokens=20, logit_bias=never)
    assert generate(engine, waiting)["w"] == free["f"]


def test_unconstrained_rows_beside_constrained_ones_are_unchanged(engine: Engine) -> None:
    plain = [request(f"p{i}", None, seed=i, temperature=t) for i, t in enumerate((0, 0.8, 0))]
    alone = generate(engine, *plain)
    schema = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))
    mixed = [request(f"c{i}", schema, seed=10 + i) for i in range(3)]
    together = generate(engine, *(r for pair in zip(plain, mixed, strict=True) for r in pair))
    assert {rid: together[rid] for rid in alone} == alone


def test_a_plus_100_bias_selects_its_token_every_step(engine: Engine) -> None:
    favourite = 777
    biased = request("b", None, temperature=1.0, max_tokens=16, logit_bias=((favourite, 100.0),))
    assert generate(engine, biased)["b"] == [favourite] * 16


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        (ConstraintKind.JSON_SCHEMA, '{"type": "nonsense"}'),
        (ConstraintKind.JSON_SCHEMA, "[1, 2"),
        (ConstraintKind.JSON_SCHEMA, "[1, 2]"),
        (ConstraintKind.REGEX, "([a-z]"),
        (ConstraintKind.LARK, "start: ("),
    ],
)
def test_a_bad_grammar_is_invalid_input(engine: Engine, kind: ConstraintKind, spec: str) -> None:
    with pytest.raises(InvalidInput, match=f"invalid {kind.value} constraint"):
        engine.prepare(request("bad", Constraint(kind, spec)))


def test_compiles_are_cached_by_kind_and_spec(compiler: ConstraintCompiler) -> None:
    schema = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))
    first, second = compiler.matcher(schema), compiler.matcher(schema)
    assert first.matcher is not second.matcher  # each request its own state...
    assert compiler._template.cache_info().hits >= 1  # ...copied from one compile
