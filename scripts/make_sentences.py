"""Extract the evaluation sentences from the Lee news corpus shipped in gensim's wheel.

The Lee corpus (M. D. Lee, B. Pincombe, M. Welsh, "An empirical evaluation of models of text
document similarity", CogSci 2005) is 50 Australian Broadcasting Corporation news summaries
collected for a human document-similarity study; its background corpus is 300 more news
documents. gensim (4.4.0) ships both as ``gensim/test/test_data/lee.cor`` and
``lee_background.cor`` (one document per line, Latin-1). This script was run once:

    pip download --no-deps -d /tmp/g gensim          # the wheel only, gensim is not installed
    python scripts/make_sentences.py /tmp/g/gensim-*.whl > sim/data/lee_sentences.txt
    python scripts/make_sentences.py /tmp/g/gensim-*.whl --member lee_background.cor \
        --limit 32 > sim/data/lee_calibration.txt

The first file is the evaluation set, the second (disjoint documents) calibrates the
precision policy.

It splits each document into sentences on ``.``/``!``/``?`` followed by a space and a capital
letter or quote, keeps sentences of 6..60 words, and writes them in corpus order, one a line.
Nothing is edited by hand.
"""

import argparse
import re
import zipfile

DATA = "gensim/test/test_data/"
SPLIT = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"'A-Z])")


def sentences(text):
    for doc in text.splitlines():
        for s in SPLIT.split(doc.strip()):
            s = " ".join(s.split())
            if 6 <= len(s.split()) <= 60:
                yield s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="gensim wheel, or a .cor file")
    ap.add_argument("--member", default="lee.cor", help="file inside the wheel's test_data")
    ap.add_argument("--limit", type=int, default=0, help="keep the first N sentences (0: all)")
    args = ap.parse_args()
    if args.source.endswith(".whl"):
        with zipfile.ZipFile(args.source) as z:
            text = z.read(DATA + args.member).decode("latin-1")
    else:
        with open(args.source, encoding="latin-1") as f:
            text = f.read()
    out = list(sentences(text))
    for s in out[:args.limit or None]:
        print(s)


if __name__ == "__main__":
    main()
