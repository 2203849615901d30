"""Tool calls in the generation engine, on the fake LM (which echoes its prompt): the tool_choice
grammars, the calls parsed out of each choice, their stream fragments and finish reasons."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shared.errors import InvalidRequest
from shared.jobs import ChatMessage, GenerateJob, JsonSchemaConstraint
from shared.tools import FunctionDefinition, Tool, ToolUse
from tests.unit.workers.test_generation import ListSink, make_job, outcome, spec, submit
from workers.backends.fake_lm import FakeLM
from workers.engines.generation import GenerationEngine
from workers.tools import FORMATS

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
TOOLS = [
    Tool(function=FunctionDefinition(name="get_weather", parameters=CITY)),
    Tool(function=FunctionDefinition(name="get_time")),
]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call>'


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def engine(sink: ListSink) -> Iterator[GenerationEngine]:
    lm = FakeLM(tool_format=FORMATS["hermes"])
    engine = GenerationEngine(lm, spec(), sink)
    engine.start()
    yield engine
    engine.stop()


def chat(prompt: str, mode: str = "auto", function: str | None = None, **kw: object) -> GenerateJob:
    """A chat job whose one message is ``prompt`` (the fake writes it back), offering TOOLS."""
    job = make_job(messages=[ChatMessage(role="user", content=prompt)], **kw)
    use = ToolUse(tools=TOOLS, mode=mode, function=function)
    return job.model_copy(update={"tools": use})


def test_a_required_call_is_parsed_out_of_the_text(engine) -> None:
    choice = outcome(submit(engine, chat(CALL + "<eos>", "required"))).choices[0]
    assert choice.text == "" and choice.finish_reason == "tool_calls"
    (call,) = choice.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_the_grammar_writes_a_valid_call_whatever_the_model_prefers(engine) -> None:
    # The fake would write prose; the required grammar turns it into a call of an offered tool.
    for seed in range(5):
        job = chat("I would rather chat about the weather.", "required", temperature=1.0, seed=seed)
        choice = outcome(submit(engine, job)).choices[0]
        assert choice.finish_reason in ("tool_calls", "length")
        if choice.finish_reason == "tool_calls":
            (call,) = choice.tool_calls
            assert call.function.name in ("get_weather", "get_time")
            arguments = json.loads(call.function.arguments)
            assert set(arguments) <= {"city"} and choice.text == ""


def test_a_named_function_is_called_and_ends_with_stop(engine) -> None:
    wrong = CALL.replace("get_weather", "get_time")
    choice = outcome(submit(engine, chat(wrong, "function", function="get_weather", max_tokens=80))).choices[
        0
    ]
    assert choice.finish_reason == "stop"  # OpenAI's reason for a named tool_choice
    assert [c.function.name for c in choice.tool_calls] == ["get_weather"]


def test_auto_keeps_text_and_parses_a_call_after_it(engine) -> None:
    answer = outcome(submit(engine, chat("Just text.<eos>"))).choices[0]
    assert (answer.text, answer.tool_calls, answer.finish_reason) == ("Just text.", None, "stop")
    both = outcome(submit(engine, chat("Let me check.\n" + CALL + "<eos>"))).choices[0]
    assert both.text == "Let me check." and both.finish_reason == "tool_calls"
    assert both.tool_calls[0].function.arguments == '{"city":"Paris"}'


def test_streamed_fragments_accumulate_into_the_finished_calls(engine, sink) -> None:
    job = chat(CALL + "\n" + CALL.replace("Paris", "Rome") + "<eos>", "required", stream=True)
    result = outcome(submit(engine, job))
    calls = result.choices[0].tool_calls
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    deltas = [d for event in sink.events(job.job_id) for d in event.deltas]
    assert "".join(d.text for d in deltas) == result.choices[0].text == ""  # required: no text
    fragments = [f for d in deltas for f in d.tool_calls or []]
    firsts = [f for f in fragments if f.id is not None]
    assert [(f.index, f.id, f.name) for f in firsts] == [
        (i, c.id, c.function.name) for i, c in enumerate(calls)
    ]
    for i, call in enumerate(calls):
        assert "".join(f.arguments for f in fragments if f.index == i) == call.function.arguments
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]


def test_each_choice_parses_its_own_calls(engine) -> None:
    result = outcome(submit(engine, chat(CALL + "<eos>", "required", n=3)))
    ids = {c.tool_calls[0].id for c in result.choices}
    assert len(ids) == 3 and all(c.finish_reason == "tool_calls" for c in result.choices)


def test_the_tools_reach_the_chat_template() -> None:
    lm = FakeLM(tool_format=FORMATS["hermes"])
    engine = GenerationEngine(lm, spec(), ListSink())
    submit(engine, chat("hi<eos>"))
    assert lm.offered == TOOLS


def test_tools_for_a_model_that_cannot_render_them_are_refused() -> None:
    engine = GenerationEngine(FakeLM(), spec(), ListSink())
    with pytest.raises(InvalidRequest) as refused:
        submit(engine, chat("hi"))
    assert refused.value.param == "tools" and "chat template" in refused.value.message


def test_tools_and_a_response_format_are_refused_together(engine) -> None:
    job = chat("hi").model_copy(update={"constraint": JsonSchemaConstraint(json_schema={"type": "object"})})
    with pytest.raises(InvalidRequest) as refused:
        submit(engine, job)
    assert refused.value.param == "response_format"


@pytest.fixture(scope="module")
def tiny_chat(default_models_dir):
    from workers.backends.causal_lm import CausalLM

    return CausalLM.load(spec().model_copy(update={"source": str(default_models_dir / "tiny-chat")}))


def test_tiny_chat_takes_tools_in_the_hermes_format_and_renders_call_history(tiny_chat) -> None:
    assert tiny_chat.tool_format is FORMATS["hermes"]
    history = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=[
                {"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        ),
        ChatMessage(role="tool", content="sunny", tool_call_id="call_1"),
    ]
    text = tiny_chat.tokenizer.decode(tiny_chat.chat_prompt(history, TOOLS))
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text  # in the system turn
    # The arguments' JSON text became an object for the template (not a quoted string).
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert text.endswith("<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("mode, function", [("required", None), ("function", "get_weather")])
def test_the_random_tiny_chat_writes_valid_calls_under_the_grammar(tiny_chat, mode, function) -> None:
    engine = GenerationEngine(tiny_chat, spec(), ListSink())
    engine.start()
    try:
        jobs = [
            chat("What is the weather in Paris?", mode, function, temperature=1.0, seed=s, max_tokens=60)
            for s in range(8)
        ]
        for result in [outcome(submit(engine, job)) for job in jobs]:
            choice = result.choices[0]
            assert choice.finish_reason == ("stop" if function else "tool_calls"), choice
            assert choice.text == "" and len(choice.tool_calls) >= 1
            for call in choice.tool_calls:
                arguments = json.loads(call.function.arguments)
                if call.function.name == "get_weather":
                    assert set(arguments) == {"city"} and len(arguments["city"]) <= 20
                else:
                    assert call.function.name == "get_time" and arguments == {}
    finally:
        engine.stop()
