"""What rq keeps of a job's result."""

from shared.jobs import Choice, EmbedResult, GenerateResult, RerankResult, TokenLogprob, Usage
from workers.tasks import rq_return_value

USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


def test_rq_keeps_the_shape_of_embeddings_not_the_vectors() -> None:
    result = EmbedResult(embeddings=[[0.6, 0.8, 0.0]] * 4, usage=USAGE, input_tokens=[1, 1, 1, 0])
    assert rq_return_value(result) == {
        "type": "embed",
        "embeddings": 4,
        "dimensions": 3,
        "usage": USAGE.model_dump(mode="json"),
    }


def test_rq_keeps_generated_texts_without_their_logprobs() -> None:
    logprob = TokenLogprob(id=7, token="hi", logprob=-0.5, bytes=list(b"hi"))
    result = GenerateResult(
        choices=[Choice(index=0, text="hi", finish_reason="length", logprobs=[logprob])], usage=USAGE
    )
    kept = rq_return_value(result)
    assert kept["choices"] == [{"index": 0, "text": "hi", "finish_reason": "length"}]
    assert kept["usage"] == USAGE.model_dump(mode="json")


def test_rq_keeps_rerank_scores() -> None:
    result = RerankResult(scores=[0.9, 0.1], usage=USAGE)
    assert rq_return_value(result)["scores"] == [0.9, 0.1]
