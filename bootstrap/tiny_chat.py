"""tiny-chat's chat template and weights: a random-weight model shaped to write varied, word-like text.

Random weights with tied embeddings repeat the prompt's last token (a chat prompt ends with a
newline, so greedy output was a run of newlines). Here the weights are still made by code, offline,
but shaped so that a newcomer trying ``stop``, penalties or ``logprobs`` on the default model sees
them act:

* the embeddings and the (untied) output head hold a low-rank factorisation of the log-probabilities
  of token bigrams in generated English answers, so each token tends to be followed by a plausible
  next one (``Did each word. Jack played ...``); a token never follows itself;
* the first attention layer averages the context and subtracts its bigram guesses a little, so the
  text depends on the prompt and drifts instead of settling into one loop at once;
* one channel of every embedding is constant and acts as a bias: end-of-turn and the template's
  control tokens are never likely in free text, so a greedy answer runs until ``max_tokens``;
* two more channels mark a closing brace and the call's end (``\n</tool_call>``, one token): a
  call's JSON closes, its end follows, then end-of-turn, so a call made under a ``tool_choice``
  grammar ends the answer (finish reason ``tool_calls``). The model never starts a call by itself.

The chat template is ChatML with tools in the ``hermes`` format (Hermes 2 Pro, Qwen2.5): tool
signatures in the system turn, calls as ``<tool_call>`` JSON, results as ``<tool_response>``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from bootstrap.corpus import sentence

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOOL_CALL = "<tool_call>"
#: The call's end with the newline before it: one token, so a call's end is easy to recognise.
TOOL_CALL_END = "\n</tool_call>"

#: ChatML; with ``tools``, a hermes-format system turn, assistant calls and tool results.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ messages[0]['content'] + '\\n\\n' }}"
    "{%- endif -%}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools -%}{{ '\\n' + (tool | tojson) }}{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments'"
    " + ' within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    ' + \'{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and tools and loop.first -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{ '<|im_start|>user' }}"
    "{%- endif -%}"
    "{{ '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') }}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- if message['content'] or not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": '"
    " + (call['function']['arguments'] | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

#: Hidden channels: a constant one (a bias for the output head), two marks (the token is the end
#: of a call; the token ends with a closing brace), then the bigram factors.
_BIAS, _CALL_ENDED, _BRACE, _FIRST_BIGRAM = 0, 1, 2, 3
#: How strongly the context's average pushes away from what it already predicts (repetition).
_CONTEXT_WEIGHT = -4.0
#: Answers whose bigrams are counted.
_ANSWERS = 6000
_SUPPRESSED = -30.0
_TIE_BREAK = 0.02


def shape_weights(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Overwrite ``model``'s embeddings, output head and first attention layer (see the module doc)."""
    import torch

    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    rank = hidden - _FIRST_BIGRAM
    logp = _bigram_logprobs(tokenizer, vocab)
    left, values, right = torch.svd_lowrank(logp, q=rank + 8, niter=4)
    left, values, right = left[:, :rank], values[:rank], right[:, :rank]
    factors_in, factors_out = left * values.sqrt(), right * values.sqrt()
    # Unit-RMS rows: the final norm then leaves the bias channel at about 1 for every token.
    scale = factors_in.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-6)
    embed = torch.zeros(vocab, hidden)
    embed[:, _BIAS] = 1.0
    embed[:, _FIRST_BIGRAM:] = factors_in / scale
    head = torch.zeros(vocab, hidden)
    head[:, _FIRST_BIGRAM:] = factors_out * scale.mean()
    # Tokens never seen in the answers would have equal logits: ties that float noise breaks one way
    # alone and another in a batch (a seed would not reproduce its text). A fixed random bias parts them.
    head[:, _BIAS] = torch.randn(vocab, generator=torch.Generator().manual_seed(0)) * _TIE_BREAK
    ids = tokenizer.convert_tokens_to_ids
    call_end, eos = ids(TOOL_CALL_END), tokenizer.eos_token_id
    for token in {eos, tokenizer.pad_token_id, ids("<|im_start|>"), call_end}:
        head[token, _BIAS] = _SUPPRESSED
    # A call's end follows its closing brace (a grammar allows it nowhere else), and ends the answer.
    for token, text in enumerate(tokenizer.convert_ids_to_tokens(list(range(vocab)))):
        if text is not None and text.endswith("}"):
            embed[token, _BRACE] = 4.0
    head[call_end, _BRACE] = -4 * _SUPPRESSED
    embed[call_end, _CALL_ENDED] = 4.0
    head[eos, _CALL_ENDED] = -4 * _SUPPRESSED
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(embed)
        model.get_output_embeddings().weight.copy_(head)
        _average_context(model.model.layers[0].self_attn, model.config, _CONTEXT_WEIGHT)


def _average_context(attention, config, weight: float) -> None:
    """Make ``attention`` add ``weight`` x the mean of the context's first bigram channels.

    Zero queries attend uniformly; values copy one block of channels per key-value head, and the
    output puts each block back where it came from (one query head per key-value head).
    """
    import torch

    head_dim = config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    attention.q_proj.weight.zero_()
    values = torch.zeros_like(attention.v_proj.weight)
    output = torch.zeros_like(attention.o_proj.weight)
    for kv in range(config.num_key_value_heads):
        channels = torch.arange(head_dim) + _FIRST_BIGRAM + kv * head_dim
        values[kv * head_dim + torch.arange(head_dim), channels] = 1.0
        output[channels, kv * group * head_dim + torch.arange(head_dim)] = weight
    attention.v_proj.weight.copy_(values)
    attention.o_proj.weight.copy_(output)


def _bigram_logprobs(tokenizer, vocab: int):
    """Centred log-probabilities of the next token after each token, in generated answers."""
    import torch

    rng = random.Random(1)
    counts = torch.zeros(vocab, vocab, dtype=torch.float64)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for _ in range(_ANSWERS):
        # An answer follows the template's newline after "assistant".
        answer = " ".join(sentence(rng) for _ in range(rng.randint(1, 4)))
        ids = torch.tensor(newline + tokenizer(answer, add_special_tokens=False)["input_ids"])
        counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    smoothed = counts + 0.01
    logp = (smoothed / smoothed.sum(dim=1, keepdim=True)).log()
    logp -= logp.mean(dim=1, keepdim=True)
    logp.fill_diagonal_(float(logp.min()))  # no token follows itself
    return logp.float()
