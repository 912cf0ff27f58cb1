"""Generate the T5 tokenizer folder shipped under ``webui/models/model_configs/sd3/tokenizer_3``.

Why this exists: SD3.5 (and Flux) encode prompts with T5-XXL, whose tokenizer (a SentencePiece unigram
model of 32,000 pieces plus 100 ``<extra_id_N>`` sentinels, Apache-2.0, from Google's T5 v1.1) is not
part of any checkpoint and would normally be fetched from the Hugging Face hub. The app works offline, so
the tokenizer is built once from a registry package and committed, as the CLIP ones are
(tools/build_clip_tokenizer.py). This script is a one-off: rerun it only to rebuild the shipped files.

Source: the PyPI source distribution ``stable-diffusion-cpp-python`` (MIT) vendors stable-diffusion.cpp,
whose ``src/tokenizers/vocab/clip_t5.hpp`` embeds the T5 v1.1 ``tokenizer.json`` (the tokenizers-library
form of the SentencePiece model) as the byte array ``t5_tokenizer_json_str``. Fetch it without building::

    pip download --no-deps --no-binary=:all: stable-diffusion-cpp-python==0.4.7 -d /tmp/sdcpp
    python tools/build_t5_tokenizer.py /tmp/sdcpp/stable_diffusion_cpp_python-0.4.7.tar.gz

(the path may also point at an extracted ``clip_t5.hpp``). ``pip download`` of an sdist needs the build
backend (scikit-build-core) importable to read its metadata; it does not compile anything.

The written folder holds ``tokenizer.json`` plus the ``tokenizer_config.json`` / ``special_tokens_map.json``
that transformers' ``T5TokenizerFast`` reads: pad ``<pad>`` (id 0), eos ``</s>`` (id 1), unk ``<unk>``
(id 2), and a 256-token context, the length SD3.5's pipeline encodes prompts to.
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from pathlib import Path

HEADER_MEMBER_SUFFIX = "src/tokenizers/vocab/clip_t5.hpp"
ARRAY_NAME = "t5_tokenizer_json_str"
T5_PIECES = 32_000
T5_SENTINELS = 100
T5_MAX_LENGTH = 256
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "webui" / "models" / "model_configs" / "sd3" / "tokenizer_3"


def read_header(source: Path) -> str:
    """The C++ header text, from an sdist tarball or an extracted header file."""
    if source.suffix == ".hpp":
        return source.read_text(encoding="utf-8")
    with tarfile.open(source) as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith(HEADER_MEMBER_SUFFIX)), None)
        if member is None:
            raise SystemExit(f"{source} has no {HEADER_MEMBER_SUFFIX}")
        handle = archive.extractfile(member)
        assert handle is not None
        return handle.read().decode("utf-8")


def tokenizer_json_from_header(header: str) -> dict:
    """Decode the `static const unsigned char t5_tokenizer_json_str[] = {0x.., ...};` array."""
    start = header.index(ARRAY_NAME + "[]")
    body = header[header.index("{", start) + 1: header.index("};", start)]
    data = bytes(int(value, 16) for value in re.findall(r"0x[0-9a-fA-F]{1,2}", body))
    tokenizer = json.loads(data)
    vocab = tokenizer["model"]["vocab"]
    if tokenizer["model"]["type"] != "Unigram" or len(vocab) != T5_PIECES + T5_SENTINELS:
        raise SystemExit(f"unexpected tokenizer: {tokenizer['model']['type']} with {len(vocab)} pieces")
    if [vocab[i][0] for i in range(3)] != ["<pad>", "</s>", "<unk>"]:
        raise SystemExit("unexpected special tokens at ids 0..2")
    return tokenizer


def write_folder(tokenizer: dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {**special, "extra_ids": T5_SENTINELS, "model_max_length": T5_MAX_LENGTH,
              "tokenizer_class": "T5Tokenizer", "clean_up_tokenization_spaces": True}
    (output / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (output / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="stable-diffusion-cpp-python sdist (.tar.gz) or clip_t5.hpp")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="tokenizer folder to write")
    args = parser.parse_args()
    write_folder(tokenizer_json_from_header(read_header(args.source)), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
