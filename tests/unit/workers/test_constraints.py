"""The constraint backend (llguidance) on the fake LM's byte-level vocabulary: masks, accept, finish,
tags for tool calls, errors naming the parameter, and hostile specs bounded in time and size."""

from __future__ import annotations

import time

import numpy as np
import pytest

from shared.errors import InvalidRequest
from shared.jobs import (
    MAX_CONSTRAINT_BYTES,
    ChoiceConstraint,
    GrammarConstraint,
    JsonSchemaConstraint,
    RegexConstraint,
    Tag,
    TagsConstraint,
)
from workers.backends.fake_lm import EOS_ID, FakeLM
from workers.constraints import bitmask, get_backend

LM = FakeLM()
VOCAB = LM.vocab_size


@pytest.fixture(scope="module")
def compiler():
    return get_backend().bind(LM.vocabulary())


def allowed(matcher) -> set[int]:
    mask = bitmask.allocate(1, VOCAB)
    matcher.fill(mask, 0)
    return set(np.flatnonzero(~bitmask.disallowed(mask, VOCAB)[0].numpy()).tolist())


def feed(matcher, text: str) -> bool:
    """Accept ``text``'s tokens; False at the first one refused."""
    return all(matcher.accept(t) for t in LM.encode(text))


def byte(char: str) -> int:
    return LM.encode(char)[0]


def test_json_schema_masks_accept_and_finish(compiler):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    m = compiler.compile(JsonSchemaConstraint(json_schema=schema))
    assert allowed(m) == {byte("{")}
    assert feed(m, '{"a":1') and not m.done
    assert byte("}") in allowed(m) and EOS_ID not in allowed(m)
    assert feed(m, "2}") and m.done and allowed(m) == {EOS_ID}  # complete: only EOS is left
    assert m.error is None


def test_a_refused_token_puts_the_matcher_in_error(compiler):
    m = compiler.compile(RegexConstraint(pattern=r"[0-9]{2}"))
    assert not m.accept(byte("x"))
    assert m.error and not m.done


def test_copies_are_independent(compiler):
    m = compiler.compile(ChoiceConstraint(choices=["yes", "no"]))
    a, b = m.copy(), m.copy()
    assert feed(a, "yes") and a.done
    assert allowed(b) == {byte("y"), byte("n")} and feed(b, "no") and b.done
    assert allowed(m) == {byte("y"), byte("n")}


def test_compact_json_and_any_object(compiler):
    m = compiler.compile(JsonSchemaConstraint(json_schema={"type": "object"}))
    assert not m.copy().accept(byte(" ")) and not m.copy().accept(byte("["))
    assert feed(m, '{"k":[1,{"x":null}]}') and m.done


def test_lark_and_gbnf_grammars(compiler):
    lark = compiler.compile(GrammarConstraint(grammar='start: "a" B\nB: /[0-9]+/'))
    assert feed(lark, "a42") and not feed(lark.copy(), "x")
    gbnf = compiler.compile(GrammarConstraint(grammar='root ::= "ok" | "no"'))
    assert feed(gbnf, "ok") and gbnf.done


def call(name: str) -> Tag:
    return Tag(
        begin=f'<tool_call>\n{{"name": "{name}", "arguments": ',
        json_schema={"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        end="}\n</tool_call>",
    )


CALL = '<tool_call>\n{"name": "search", "arguments": {"q":"x"}}\n</tool_call>'


def test_lazy_tags_leave_text_free_and_make_calls_valid(compiler):
    spec = TagsConstraint(trigger="<tool_call>", tags=[call("search"), call("fetch")])
    m = compiler.compile(spec)
    assert feed(m.copy(), "Any text at all.")
    assert feed(m.copy(), "Let me look. " + CALL)
    wrong = m.copy()
    assert not feed(wrong, CALL.replace("search", "serch"))  # woken by the marker: names are checked


def test_required_tags_allow_only_calls(compiler):
    spec = TagsConstraint(trigger="<tool_call>", tags=[call("search")], required=True, parallel=False)
    m = compiler.compile(spec)
    assert allowed(m) == {byte("<")}
    assert feed(m, CALL) and m.done
    parallel = compiler.compile(spec.model_copy(update={"parallel": True}))
    assert feed(parallel, CALL + "\n" + CALL) and not parallel.done  # another call may follow


def test_a_special_token_trigger_is_matched_as_that_token():
    lm = FakeLM()
    spec = TagsConstraint(trigger="<eos>", tags=[Tag(begin="<eos>", json_schema={"type": "integer"})])
    m = get_backend().bind(lm.vocabulary()).compile(spec.model_copy(update={"required": True}))
    assert allowed(m) == {EOS_ID}


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (JsonSchemaConstraint(json_schema={"type": "strange"}), "strange"),
        (RegexConstraint(pattern="a(b", param="structured_outputs"), "unclosed group"),
        (GrammarConstraint(grammar="start: nothing_defined", param="structured_outputs"), "unknown name"),
        (TagsConstraint(trigger="<a>", tags=[Tag(begin="<b>", json_schema={})]), "does not start with"),
    ],
)
def test_refused_specs_name_their_parameter_without_a_tokenizer(spec, words):
    with pytest.raises(InvalidRequest) as caught:
        get_backend().check(spec)
    assert caught.value.param == spec.param and words in str(caught.value)


def test_the_worker_refuses_what_the_api_would(compiler):
    with pytest.raises(InvalidRequest, match="strange") as caught:
        compiler.compile(JsonSchemaConstraint(json_schema={"type": "strange"}, param="structured_outputs"))
    assert caught.value.param == "structured_outputs"


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def exponential_refs(levels: int) -> dict:
    """Each level has two references to the next: 2**levels paths if expanded."""
    defs = {
        f"d{i}": {
            "anyOf": [
                {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}},
                {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"}}},
            ]
        }
        for i in range(levels)
    }
    return {"$defs": {**defs, f"d{levels}": {"type": "integer"}}, "$ref": "#/$defs/d0"}


HOSTILE = {
    "deep nesting": nested(60),
    "exponential references": exponential_refs(40),
    "huge enum": {"enum": [f"v{i}" for i in range(MAX_CONSTRAINT_BYTES // 8)]},
    "many optional properties": {
        "type": "object",
        "properties": {f"p{i}": {"type": "string"} for i in range(MAX_CONSTRAINT_BYTES // 32)},
    },
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_schemas_compile_or_fail_fast(compiler, name):
    spec = JsonSchemaConstraint(json_schema=HOSTILE[name])
    assert len(spec.model_dump_json()) <= MAX_CONSTRAINT_BYTES
    began = time.perf_counter()
    for step in (get_backend().check, compiler.compile):
        try:
            step(spec)
        except InvalidRequest as exc:
            assert exc.param == "response_format"
    assert time.perf_counter() - began < 2.0


def test_a_spec_over_the_size_limit_is_refused_before_compiling(compiler):
    spec = ChoiceConstraint(choices=["x" * 1000] * (MAX_CONSTRAINT_BYTES // 1000 + 1))
    for step in (get_backend().check, compiler.compile):
        with pytest.raises(InvalidRequest, match="bytes as JSON"):
            step(spec)


def test_a_step_over_its_work_limit_is_an_error_not_a_stall(compiler):
    m = compiler.compile(RegexConstraint(pattern="([a-z]{0,200}){0,200}q"))
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    for _ in range(200):
        options = sorted(allowed(m))
        if m.error or not options:
            break
        m.accept(int(rng.choice(options)))
    assert m.error and "too many" in m.error
    assert time.perf_counter() - began < 2.0


def test_bitmask_apply_masks_only_its_rows():
    import torch

    logits = torch.zeros(3, 40)
    mask = bitmask.allocate(1, 40)
    mask[0, 0] = 0b101  # tokens 0 and 2
    mask[0, 1] = 0  # none of 32..39
    out = bitmask.apply(logits, [1], mask)
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [0, 2]
    assert torch.equal(logits, torch.zeros(3, 40))  # the input is left as it was


def test_forced_texts_are_tokenized_once_per_vocabulary():
    # llguidance tokenizes the bytes a grammar forces at nearly every step: the backend keeps them.
    from dataclasses import replace

    calls: list[str] = []
    base = LM.vocabulary()

    def encode(text: str) -> list[int]:
        calls.append(text)
        return base.encode(text)

    bound = get_backend().bind(replace(base, encode=encode))
    spec = JsonSchemaConstraint(json_schema={"type": "object", "properties": {"name": {"const": "ab"}}})

    def run() -> list[frozenset[int]]:
        matcher = bound.compile(spec)
        masks = []
        for token in LM.encode('{"name":"ab"}'):
            masks.append(frozenset(allowed(matcher)))
            assert matcher.accept(token)
        assert matcher.done
        return masks

    first = run()
    assert calls, "the grammar forces text: llguidance tokenizes it"
    seen = len(calls)
    assert run() == first and len(calls) == seen  # the same texts again: no tokenizer call


WALKS = [
    JsonSchemaConstraint(
        json_schema={
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 6},
                "kind": {"enum": ["cat", "dog", "Hello world"]},
                "tags": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
            },
            "required": ["name", "kind", "tags"],
        }
    ),
    RegexConstraint(pattern=r"(Hello|STOP)[a-c]{2,5} world"),
    ChoiceConstraint(choices=["Hello world", "Hello", "STOP"]),
    GrammarConstraint(grammar='start: "(" N ("+" N)* ")"\nN: /[1-9][0-9]?/'),
    TagsConstraint(trigger="<tool_call>", tags=[call("search")], required=True, parallel=False),
]


@pytest.mark.parametrize("spec", WALKS, ids=lambda s: type(s).__name__)
def test_forced_and_allows_agree_with_the_mask(compiler, spec):
    # The engine takes a forced token without a mask and keeps a token drawn unmasked if allowed:
    # both must say exactly what the mask says, all along random walks through the grammar.
    rng = np.random.default_rng(0)
    forced_seen = 0
    for _ in range(30):
        m = compiler.compile(spec)
        for _ in range(60):
            mask = allowed(m.copy())  # a copy: the walk's own matcher asks forced() first, as the engine does
            run = m.forced()
            if run:
                forced_seen += 1
                assert mask == {run[0]}
                ahead = m.copy()  # the engine may take the whole run in one step
                assert all(allowed(ahead.copy()) == {t} and ahead.accept(t) for t in run)
            probes = rng.choice(VOCAB, size=8, replace=False).tolist() + sorted(mask)[:4]
            assert all(m.allows(t) == (t in mask) for t in probes)
            assert allowed(m) == mask  # asking did not move it
            assert m.accept(int(rng.choice(sorted(mask))))
            if m.done:
                break
    assert forced_seen > 0


def test_a_spec_compiled_again_is_a_fresh_copy(compiler):
    spec = JsonSchemaConstraint(json_schema={"type": "object", "properties": {"a": {"type": "integer"}}})
    first = compiler.compile(spec)
    assert feed(first, '{"a":1')
    second = compiler.compile(spec)  # from the kept start state: not where the first one is
    assert allowed(second) == {byte("{")} and feed(second, '{"a":22}')
    with pytest.raises(InvalidRequest):  # a refused spec is refused every time (nothing kept)
        compiler.compile(RegexConstraint(pattern="(", param="structured_outputs"))
    with pytest.raises(InvalidRequest):
        compiler.compile(RegexConstraint(pattern="(", param="structured_outputs"))
