"""A generation job made ready for the engine: checked, tokenized, and its choices' state when they start.

Runs in the submitting (rq slot) thread, so a bad job is refused before it reaches the engine
thread, with an :class:`InvalidRequest` naming the parameter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pydantic import ValidationError

from shared.catalog import ModelSpec
from shared.errors import InvalidRequest
from shared.jobs import Constraint, GenerateJob, SamplingParams
from workers.constraints import Matcher
from workers.engines.base import Ticket
from workers.engines.generation.model import LanguageModel
from workers.engines.generation.state import RequestState, SequenceState
from workers.engines.generation.text import Detokenizer, StopMatcher
from workers.engines.sampling import SequenceSampler
from workers.tools import ToolFormat
from workers.tools.grammar import tool_constraint

#: Prompt tokens decoded in front of a choice's first token, so its leading space comes out right.
DETOKENIZE_CONTEXT = 5
#: The request parameter a SamplingParams field comes from, where the names differ.
_PARAMS = {"logprobs": "top_logprobs"}


def new_request(
    job: GenerateJob,
    cancel: threading.Event,
    lm: LanguageModel,
    spec: ModelSpec,
    compile_constraint: Callable[[Constraint], Matcher],
) -> RequestState:
    """Check and tokenize ``job`` and compile its constraint; raises :class:`InvalidRequest`."""
    sampling = job.sampling
    if job.n < 1:
        raise InvalidRequest("n must be at least 1", param="n")
    # Before tokenizing: the API refuses all this too, but jobs may come from elsewhere.
    check_ranges(sampling)
    spec.check_sequences(len(job.prompts or [None]), job.n)
    check_vocabulary(sampling, lm.vocab_size)
    tool_format = None if job.tools is None else _tool_format(job, lm, spec)
    prompts, param = _encode(job, lm)
    context = lm.context_length
    for ids in prompts:
        if not ids:
            raise InvalidRequest("the prompt is empty", param=param)
        if len(ids) >= context:
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens, but the {param} "
                f"resulted in {len(ids)} tokens, leaving no room for a completion. "
                f"Please reduce the length of the {param}.",
                param=param,
                code="context_length_exceeded",
            )
    rooms = [context - len(ids) for ids in prompts]
    limits = rooms if sampling.max_tokens is None else [min(sampling.max_tokens, r) for r in rooms]
    req = RequestState(ticket=Ticket(job, cancel), job=job, prompts=prompts, limits=limits)
    req.tool_format, req.constraint = tool_format, job.constraint
    if job.tools is not None and tool_format is not None:
        req.constraint = tool_constraint(job.tools, tool_format)
    if req.constraint is not None:
        req.matcher = compile_constraint(req.constraint)
    if job.echo and job.prompts is not None:
        # A text prompt echoes as sent; token ids echo as their text.
        req.echo_texts = [p if isinstance(p, str) else lm.decode(p) for p in job.prompts]
    req.unfinished = req.choices
    return req


def start_sequence(req: RequestState, index: int, lm: LanguageModel) -> SequenceState:
    """The state of choice ``index`` of ``req``, made as it starts."""
    prompt, sample = divmod(index, req.job.n)
    ids, sampling = req.prompts[prompt], req.job.sampling
    return SequenceState(
        request=req,
        index=index,
        prompt=prompt,
        limit=req.limits[prompt],
        # Seeded by the sample's place among its prompt's n, so a prompt's text does not depend
        # on the other prompts of the job.
        sampler=SequenceSampler(sampling, ids, None if sampling.seed is None else sampling.seed + sample),
        detokenizer=Detokenizer(lm.decode, ids[-DETOKENIZE_CONTEXT:]),
        stops=StopMatcher(sampling.stop),
        logprobs=None if sampling.logprobs is None else [],
        matcher=None if req.matcher is None else req.matcher.copy(),
        tools=None if req.tool_format is None else req.tool_format.reader(),
    )


def _tool_format(job: GenerateJob, lm: LanguageModel, spec: ModelSpec) -> ToolFormat:
    """The format of the model's tool calls; refuses tools the job cannot use."""
    if job.messages is None:
        raise InvalidRequest("tools are for chat requests", param="tools")
    if lm.tool_format is None:
        raise InvalidRequest(
            f"model {spec.name!r} cannot take tools: its chat template does not render them",
            param="tools",
            code="tools_not_supported",
        )
    if job.constraint is not None:  # one grammar per choice: the format's or the calls'
        raise InvalidRequest(
            "response_format cannot be combined with tools (unless tool_choice is 'none')",
            param="response_format",
        )
    return lm.tool_format


def check_ranges(sampling: SamplingParams) -> None:
    """Refuse parameters outside SamplingParams' ranges (the API's ranges: one definition).

    A decoded or constructed SamplingParams is already in range; this catches one built without
    validation (``model_construct``, ``model_copy(update=...)``), so the engine never samples with one.
    """
    try:
        SamplingParams.model_validate(sampling.model_dump())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = str(first["loc"][0])
        raise InvalidRequest(
            f"invalid value for {name!r}: {first['msg']}", param=_PARAMS.get(name, name)
        ) from exc


def check_vocabulary(sampling: SamplingParams, vocab: int) -> None:
    """Refuse token ids this model does not have (a rule only the model can check)."""
    for token_id in sampling.logit_bias:
        if not 0 <= token_id < vocab:
            raise InvalidRequest(
                f"logit_bias names token {token_id}, outside this model's vocabulary of {vocab}",
                param="logit_bias",
            )


def _encode(job: GenerateJob, lm: LanguageModel) -> tuple[list[list[int]], str]:
    """The job's prompts as token ids, and the parameter they came from."""
    if job.messages is not None and job.prompts is None:
        if not job.messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        tools = None if job.tools is None else job.tools.tools
        return [lm.chat_prompt(job.messages, tools)], "messages"
    if job.prompts is not None and job.messages is None:
        if not job.prompts:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        return [_prompt_ids(prompt, lm) for prompt in job.prompts], "prompt"
    raise InvalidRequest("a generation job needs either messages or prompts", param="messages")


def _prompt_ids(prompt: str | list[int], lm: LanguageModel) -> list[int]:
    if isinstance(prompt, str):
        return lm.completion_prompt(prompt)
    vocab = lm.vocab_size
    for token_id in prompt:
        if not 0 <= token_id < vocab:
            raise InvalidRequest(
                f"prompt token {token_id} is outside this model's vocabulary of {vocab}", param="prompt"
            )
    return list(prompt)
