"""Build a tiny tokenizer and Qwen3-style model offline and save them with save_pretrained.

python scripts/make_tiny_model.py --out outputs/tiny-model --size small --corpus outputs/data/train.jsonl \
    --think-format qwen3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from train.core.cli import setup_logging
from train.core.modes import THINK_FORMATS
from train.world.tiny import SIZES, make_tiny


def read_corpus(paths: list[str]) -> list[str]:
    texts = []
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            if p.endswith(".jsonl") and line.strip():
                row = json.loads(line)
                texts.append(" ".join(str(v) for v in row.values() if isinstance(v, str)))
            else:
                texts.append(line)
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="model size preset")
    parser.add_argument("--tokenizer", default="char", choices=["char", "bpe"], help="tokenizer kind")
    parser.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size")
    parser.add_argument("--corpus", nargs="*", default=[], help="text or JSONL files to train the tokenizer on")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    parser.add_argument(
        "--think-format",
        required=True,
        choices=sorted(THINK_FORMATS),
        help="think delimiters the tokenizer is built for: qwen3 (<think>/</think>) or pangu ([unused16]/[unused17])",
    )
    args = parser.parse_args(argv)
    setup_logging()
    make_tiny(
        args.out,
        read_corpus(args.corpus),
        size=args.size,
        tokenizer_kind=args.tokenizer,
        seed=args.seed,
        think=THINK_FORMATS[args.think_format],
    )


if __name__ == "__main__":
    main()
