"""Generate the CLIP tokenizer folders shipped under ``webui/models/model_configs``.

Why this exists: building a Stable Diffusion pipeline from a single ``.safetensors``
file needs CLIP tokenizer files (``vocab.json`` + ``merges.txt``), which are not part
of the checkpoint and would normally be fetched from the Hugging Face hub. The app must
work fully offline, so we generate them once from CLIP's original BPE merge list and
commit the result. This script is a one-off: rerun it only if the shipped files need
to be rebuilt.

Source of the merge list: the PyPI wheel ``open_clip_torch`` ships CLIP's
``open_clip/bpe_simple_vocab_16e6.txt.gz``. Fetch it without installing anything::

    pip download --no-deps open_clip_torch -d /tmp/oc
    python tools/build_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl

(the path may also point at an already extracted ``bpe_simple_vocab_16e6.txt.gz``).

Vocabulary layout, as defined by CLIP's tokenizer (49408 ids):
  * ids 0..255      the 256 byte characters of GPT-2's byte-to-unicode table,
  * ids 256..511    the same characters with the end-of-word marker ``</w>``,
  * ids 512..49405  one token per merge (the merged pair, concatenated), in merge order,
  * 49406, 49407    ``<|startoftext|>`` and ``<|endoftext|>``.
Only the first 48894 merges (49152 - 256 - 2) of the file are used, exactly as CLIP does.

Each family directory gets its own copy because diffusers loads a tokenizer from
``<config dir>/<component>/``; SD2's OpenCLIP text encoder (and SDXL's second one)
was trained with ``"!"`` (id 0) as padding instead of ``<|endoftext|>``.

Those "!"-padded tokenizers also set ``split_special_tokens``: transformers registers
the pad token as a special token and would otherwise turn every "!" typed in a prompt
into the pad id 0, whereas OpenCLIP, which the model was trained with, encodes "!" as
an ordinary word (id 256, "!!" 748); see huggingface/diffusers issue #4153.
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

from transformers.convert_slow_tokenizer import bytes_to_unicode

BPE_MEMBER_NAME = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGES_HEADER = "#version: 0.2"
CLIP_MERGE_COUNT = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 49408
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
CLIP_MAX_LENGTH = 77

DEFAULT_CONFIG_ROOT = Path(__file__).resolve().parent.parent / "webui" / "models" / "model_configs"

# (family directory, tokenizer sub-folder) -> pad token the text encoder was trained with.
TOKENIZER_PAD_TOKENS: dict[tuple[str, str], str] = {
    ("sd1", "tokenizer"): END_TOKEN,
    ("sd2", "tokenizer"): "!",
    ("sdxl", "tokenizer"): END_TOKEN,
    ("sdxl", "tokenizer_2"): "!",
    ("sd3", "tokenizer"): END_TOKEN,     # SD3's CLIP-L, as SDXL's first encoder
    ("sd3", "tokenizer_2"): "!",         # SD3's OpenCLIP bigG, as SDXL's second encoder
}


def read_bpe_lines(source: Path) -> list[str]:
    """Return the lines of CLIP's gzipped merge list, from a wheel or from the .gz itself."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            compressed = wheel.read(BPE_MEMBER_NAME)
    else:
        compressed = source.read_bytes()
    return gzip.decompress(compressed).decode("utf-8").split("\n")


def build_merges(bpe_lines: list[str]) -> list[tuple[str, str]]:
    """Take the merges CLIP actually uses: skip the header line, keep the first 48894 pairs."""
    selected = bpe_lines[1 : CLIP_MERGE_COUNT + 1]
    merges: list[tuple[str, str]] = []
    for line in selected:
        left, right = line.split()
        merges.append((left, right))
    if len(merges) != CLIP_MERGE_COUNT:
        raise ValueError(f"expected {CLIP_MERGE_COUNT} merges, the file only has {len(merges)}")
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Lay out CLIP's vocabulary: bytes, bytes + '</w>', merged pairs, then the two specials."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += [left + right for left, right in merges]
    tokens += [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} distinct tokens, CLIP expects {CLIP_VOCAB_SIZE}")
    return vocab


def special_tokens_map(pad_token: str) -> dict[str, str]:
    """Special tokens as transformers' CLIPTokenizer expects them; only the pad token varies."""
    return {
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "pad_token": pad_token,
        "unk_token": END_TOKEN,
    }


def tokenizer_config(pad_token: str) -> dict[str, object]:
    """tokenizer_config.json; model_max_length 77 is what makes pipelines pad/truncate prompts."""
    config: dict[str, object] = {
        "add_prefix_space": False,
        "bos_token": START_TOKEN,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": END_TOKEN,
        "errors": "replace",
        "model_max_length": CLIP_MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": END_TOKEN,
    }
    if pad_token != END_TOKEN:
        # The pad token is also an ordinary vocabulary word: keep prompts from matching it as special.
        config["split_special_tokens"] = True
    return config


def write_json(path: Path, payload: object, compact: bool = False) -> None:
    """Write JSON deterministically; the big vocab is written compact to keep the repo small."""
    if compact:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True)
    path.write_text(text + "\n", encoding="utf-8")


def write_tokenizer_folder(
    folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str
) -> None:
    """Write one complete, self-contained tokenizer folder."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", vocab, compact=True)
    merges_text = "\n".join([MERGES_HEADER] + [f"{left} {right}" for left, right in merges]) + "\n"
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    write_json(folder / "special_tokens_map.json", special_tokens_map(pad_token))
    write_json(folder / "tokenizer_config.json", tokenizer_config(pad_token))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="open_clip_torch wheel or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument(
        "--config-root",
        type=Path,
        default=DEFAULT_CONFIG_ROOT,
        help="directory holding the sd1/sd2/sdxl config folders (default: %(default)s)",
    )
    args = parser.parse_args()

    merges = build_merges(read_bpe_lines(args.source))
    vocab = build_vocab(merges)
    for (family, component), pad_token in TOKENIZER_PAD_TOKENS.items():
        folder = args.config_root / family / component
        write_tokenizer_folder(folder, vocab, merges, pad_token)
        print(f"wrote {folder} (pad token {pad_token!r})")


if __name__ == "__main__":
    main()
