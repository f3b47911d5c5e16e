"""Build a tiny random Llama model with its own tokenizer, offline and deterministically.

Usage: ``python -m pytest_evalchemy.testing.tiny_model OUT_DIR`` (or run this file by path, which
avoids importing the package ``__init__``). Needs torch, transformers and tokenizers: run it with the
vLLM environment's python. Two builds with the same library versions give byte-identical files.

The module itself imports only the standard library: torch & co are imported inside functions so the
plugin's package never pulls them in.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

# Bump when anything below changes the files written: a stale build is then rebuilt.
BUILDER_VERSION = "tiny-llama-2"
STAMP_NAME = ".stamp"

VOCAB_SIZE = 2048
HIDDEN_SIZE = 128  # 4 heads of 32: a head size vLLM's CPU attention accepts
NUM_HEADS = 4
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 2048
SEED = 1234
# A fixed, sorted subset of the standard library (top-level modules only, so neither site-packages
# nor optional sub-packages such as test/ or idlelib/ can change the corpus).
CORPUS_FILES = 80
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
UNK, BOS, EOS = SPECIAL_TOKENS

# A small ChatML-style chat template (in tokenizer_config.json, where transformers 4 and 5 and
# vLLM read it). Its block tags rely on transformers' trim_blocks/lstrip_blocks: rendered any
# other way, the prompt would differ.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}\n"
    "    {% if loop.first and message['role'] != 'system' %}\n"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "    {% endif %}\n"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
FILES = TOKENIZER_FILES + MODEL_FILES


def corpus_paths(count: int = CORPUS_FILES) -> list[Path]:
    """The first ``count`` top-level ``.py`` files of the standard library, by sorted name."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if len(paths) < count:
        raise RuntimeError(f"only {len(paths)} .py files in {stdlib}, need {count}")
    return paths[:count]


def is_built(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a complete build stamped with this builder's version."""
    stamp = out_dir / STAMP_NAME
    try:
        if stamp.read_text(encoding="utf-8").splitlines()[0] != BUILDER_VERSION:
            return False
    except (OSError, IndexError):
        return False
    return all((out_dir / name).is_file() for name in FILES)


def _pin_threads() -> None:
    """Single-threaded BPE training and torch: thread scheduling must not be able to change the result."""
    # Must be set before the tokenizers' rayon pool starts (first parallel call), hence before training.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_tokenizer(out_dir: Path) -> None:
    """Train a byte-level BPE on the stdlib corpus and save it as a transformers fast tokenizer."""
    _pin_threads()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))  # byte-level: every byte has a token, no unk needed
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in corpus_paths()]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # Like Llama: BOS before every sequence, so echo's first logprob is the BOS's null.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    tok.save(str(out_dir / "tokenizer.json"), pretty=True)

    # Written by hand rather than by transformers' save_pretrained: transformers 5 would write
    # "TokenizersBackend", which transformers 4 cannot load, and drops special_tokens_map.json.
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": CHAT_TEMPLATE,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(
        out_dir / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
    )


def build_model(out_dir: Path) -> None:
    """Save a randomly initialised ``LlamaForCausalLM`` (fixed seed) as safetensors."""
    _pin_threads()
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    # Progress bars and transformers' own deprecation notices (its save path reads config.torch_dtype)
    # only clutter make and test logs: this build is fixed and checked by its digests.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    ids = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        tie_word_embeddings=False,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.config.torch_dtype = (
        torch.float32
    )  # recorded in config.json; vLLM's "auto" dtype reads it
    model.save_pretrained(str(out_dir), safe_serialization=True)
    GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOS]).save_pretrained(str(out_dir))


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build(out_dir: Path | str, *, force: bool = False) -> bool:
    """Build the model into ``out_dir`` unless a complete build of this version is there.

    Returns True when it built, False when it skipped. Files are written to a temporary sibling folder
    and moved in one by one, stamp last, so an interrupted build is never taken for a complete one.
    """
    out_dir = Path(out_dir)
    if not force and is_built(out_dir):
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_NAME).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tiny-build-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        build_tokenizer(work)
        build_model(work)
        missing = [name for name in FILES if not (work / name).is_file()]
        if missing:
            raise RuntimeError(f"build did not write {missing}")
        for item in sorted(work.iterdir()):
            if item.is_file():
                item.chmod(
                    0o644
                )  # safetensors' temp file is 0600; keep the build readable like the rest
                os.replace(item, out_dir / item.name)
    digests = "".join(f"{_sha256(out_dir / n)}  {n}\n" for n in FILES)
    (out_dir / STAMP_NAME).write_text(f"{BUILDER_VERSION}\n{digests}", encoding="utf-8")
    return True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Command line: ``tiny_model OUT_DIR [--force]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    force = "--force" in args
    args = [a for a in args if a != "--force"]
    if len(args) != 1:
        print(
            "usage: python -m pytest_evalchemy.testing.tiny_model OUT_DIR [--force]",
            file=sys.stderr,
        )
        return 2
    out_dir = Path(args[0])
    start = time.monotonic()
    if build(out_dir, force=force):
        size = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
        print(f"built {out_dir} ({size / 1e6:.1f} MB) in {time.monotonic() - start:.1f} s")
    else:
        print(f"{out_dir} is up to date ({BUILDER_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
