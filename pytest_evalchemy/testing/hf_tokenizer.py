"""The test server's byte-level tokenizer as a Hugging Face tokenizer folder, chat template
included, so that lm-eval's ``tokenizer_backend=huggingface`` (which renders chat templates
itself) can run against the test server and be compared with the plugin's remote path.
Needs ``tokenizers`` and ``transformers``."""

from __future__ import annotations

from pathlib import Path

from pytest_evalchemy.testing.server import CHAT_TEMPLATE, ID_OFFSET, SPECIAL_TOKENS


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-character table, which the ByteLevel pre-tokenizer uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_hf_tokenizer(
    folder: Path, chat_template: str | None = CHAT_TEMPLATE, *, adds_bos: bool = True
) -> Path:
    """Write the tokenizer (ids = byte + 3; ``<unk>``, ``<s>``, ``</s>`` special) to ``folder``;
    ``adds_bos``: like the test server's default, ``add_special_tokens`` puts ``<s>`` first
    (the server's ``adds_bos=False`` is the tokenizer without it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab |= {c: b + ID_OFFSET for b, c in enumerate(_byte_chars())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS[0]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    if adds_bos:
        bos = SPECIAL_TOKENS[1]
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, 1)]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    return folder
