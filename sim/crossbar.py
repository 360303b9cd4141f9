"""Golden model of a memristor crossbar running an MX-OP x INT linear layer, bit-exact.

A signed ``weight_bits``-bit weight ``W`` is stored in the **offset scheme**: the unsigned
``U = W + 2**(weight_bits-1)`` (0 .. 2**weight_bits - 1) is bit-sliced into
``slices = ceil(weight_bits / cell_bits)`` cells of ``cell_bits`` bits (slice ``s`` holds bits
``s*cell_bits ..``, the top slice may be partly used), one cell per physical column; output
channel ``j`` of a tile occupies columns ``j*slices .. j*slices + slices - 1``. The digital
side subtracts ``2**(weight_bits-1) * sum(q)`` exactly, so ``sum(q*W) = sum(q*U) - off*sum(q)``.

An inlier ``q`` (``bits``-bit signed, |q| <= 2**(bits-1) - 1) is applied bit-serially in two's
complement: ``q = L - s * 2**(bits-1)`` with ``L = q mod 2**(bits-1)`` and ``s = (q < 0)``.
``L`` is applied in ``ceil((bits-1)/dac_bits)`` pulses of ``dac_bits``-bit unsigned digits
(digit ``j`` has shift-add weight ``2**(j*dac_bits)``), then one 1-bit pulse of ``s`` with
weight ``-2**(bits-1)``. So every analog quantity is unsigned.

Per pulse and column, the column sum ``sum_r digit_r * cell_rc`` over the rows of one
*segment* (the rows of one tile inside one MX-OP block: tiles never mix blocks, since the
blocks carry different exponents) is digitized by the ADC: ``code = min(sum, 2**adc_bits-1)``
(saturate; ``adc_bits = 0`` means exact). Shift-add: ``sum_p w_p * sum_s 2**(s*cell_bits) *
code``. The block's inlier term is the exact integer sum of its segments minus the offset
correction; then alignment, outliers and the output rounding are exactly ``sim.fixed``'s
(``mxop_dot`` / ``affine_round``). Outliers are read by a one-hot row read, which returns the
weight row exactly. With an exact ADC and no noise, ``linear`` equals
``affine_round(*mxop_dot(...))`` bit for bit (proven by tests; used as the fast path).

``noise > 0`` (golden only, the non-ideality study): every cell reads as ``cell + noise *
N(0, 1)`` (one draw per weight programming, ``seed``), and the ADC rounds the column sum to the
nearest integer (half to even) before saturating to ``0 .. 2**adc_bits - 1`` (or the exact
range when ``adc_bits = 0``).
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import bf16, fixed, mxop
from .params import check_choice, check_float, check_int

__all__ = ["CrossbarParams", "PRESETS", "DEFAULT", "SCHEME", "slices_of", "pulses_of",
           "exact_adc_bits", "segment_rows", "pulse_digits", "bit_slices", "inlier_terms",
           "mvm", "accumulate", "linear", "tiles_needed"]

SCHEME = "offset"


@dataclass(frozen=True, kw_only=True)
class CrossbarParams:
    """Parameters of a crossbar tile (and of the array of tiles that holds one layer).

    rows, cols : tile rows R and columns C, powers of two in 64..256.
    cell_bits : bits per cell c, one of 1, 2, 4.
    adc_bits : ADC resolution a in 1..16; 0 means exact (wide enough for R rows).
    dac_bits : input bits applied per pulse d, 1..4.
    weight_bits : signed weight width w, 4..8.
    tiles : physical tiles, 1..65536 (fewer than a layer needs: they are reprogrammed in turn).
    scheme : signed-weight scheme, "offset" (the only one implemented).
    noise : cell conductance sigma in cell LSBs (golden model only; 0 = ideal).
    seed : seed of the noise draw.
    act_bits : widest inlier a pulse train applies, 2..8: the macro port carries
        ``max_pulses = pulses_of(act_bits, dac_bits)`` digit planes (RTL only).

    The macro contract (docs/crossbar.md), in cycles of the digital clock (the defaults assume
    1 GHz, NeuroSim's ``clkFreq``):

    cols_per_adc : columns sharing one ADC, a power of two in 1..cols (NeuroSim's
        ``numColMuxed``, default 8).
    t_read : read-pulse time, 1..1024 cycles (NeuroSim's ``readPulseWidth``, 10 ns).
    t_adc : one ADC conversion, 1..64 cycles (1 ns: ISAAC's 8-bit ADC at 1.28 GS/s).
    t_write : one row write, 1..4096 cycles (NeuroSim's ``writePulseWidth``, 50 ns).
    faults : cell faults (``sim.faults.CellFaults``; None = none). Stuck cells change the
        stored weights (``sim.quant`` applies ``faults.weights``); here ``inlier_terms``
        applies ``faults.apply(cells, params)``, the conductance drift (golden model only).
        The tile emulation (``hw/crossbar.py``) injects the stuck cells and has
        ``faults.spares`` spare columns per tile (``phys_cols``).
    """

    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    adc_bits: int = 0
    dac_bits: int = 1
    weight_bits: int = 8
    tiles: int = 64
    scheme: str = "offset"
    noise: float = 0.0
    seed: int = 0
    act_bits: int = 8
    cols_per_adc: int = 8
    t_read: int = 10
    t_adc: int = 1
    t_write: int = 50
    faults: object = None

    def __post_init__(self):
        check_int("rows", self.rows, 64, 256, pow2=True)
        check_int("cols", self.cols, 64, 256, pow2=True)
        check_choice("cell_bits", self.cell_bits, (1, 2, 4))
        if isinstance(self.cell_bits, bool):
            raise ValueError(f"cell_bits must be one of 1, 2, 4, not {self.cell_bits!r}")
        if self.adc_bits != 0:
            check_int("adc_bits", self.adc_bits, 1, 16)
        elif not isinstance(self.adc_bits, int) or isinstance(self.adc_bits, bool):
            raise ValueError(f"adc_bits must be an integer in 0..16, not {self.adc_bits!r}")
        check_int("dac_bits", self.dac_bits, 1, 4)
        check_int("weight_bits", self.weight_bits, 4, 8)
        check_int("tiles", self.tiles, 1, 65536)
        check_choice("scheme", self.scheme, ("offset",))
        check_float("noise", self.noise, 0, 16)
        check_int("seed", self.seed, 0, 2**32 - 1)
        check_int("act_bits", self.act_bits, 2, 8)
        check_int("cols_per_adc", self.cols_per_adc, 1, self.cols, pow2=True)
        check_int("t_read", self.t_read, 1, 1024)
        check_int("t_adc", self.t_adc, 1, 64)
        check_int("t_write", self.t_write, 1, 4096)
        if self.faults is not None and not callable(getattr(self.faults, "apply", None)):
            raise ValueError(f"faults must be None or a sim.faults.CellFaults, not "
                             f"{self.faults!r}")

    @property
    def slices(self):
        """Cells per weight, ``ceil(weight_bits / cell_bits)``."""
        return slices_of(self.weight_bits, self.cell_bits)

    @property
    def channels(self):
        """Output channels held by one tile, ``cols // slices``."""
        return self.cols // self.slices

    @property
    def spares(self):
        """Spare columns per tile: ``faults.spares`` (0 without faults)."""
        return self.faults.spares if self.faults is not None else 0

    @property
    def phys_cols(self):
        """Physical columns of a tile: ``cols + spares``."""
        return self.cols + self.spares

    @property
    def offset(self):
        """Weight offset ``2**(weight_bits-1)`` of the offset scheme."""
        return 1 << (self.weight_bits - 1)

    @property
    def colsum_max(self):
        """Largest analog column sum: ``rows * (2**dac_bits - 1) * (2**cell_bits - 1)``."""
        return self.rows * ((1 << self.dac_bits) - 1) * ((1 << self.cell_bits) - 1)

    @property
    def exact_adc_bits(self):
        return exact_adc_bits(self.rows, self.cell_bits, self.dac_bits)

    @property
    def adc_width(self):
        """Bits of an ADC code: ``adc_bits`` or the exact width."""
        return self.adc_bits if self.adc_bits else self.exact_adc_bits

    @property
    def adc_max(self):
        """Largest ADC code; column sums above it saturate to it."""
        return (1 << self.adc_width) - 1

    @property
    def adc_exact(self):
        return self.adc_max >= self.colsum_max

    @property
    def max_pulses(self):
        """Digit planes of a pulse-train request: ``pulses_of(act_bits, dac_bits)``."""
        return pulses_of(self.act_bits, self.dac_bits)

    @property
    def adcs(self):
        """ADCs per tile, ``cols // cols_per_adc``."""
        return self.cols // self.cols_per_adc

    @property
    def pulse_cycles(self):
        """Contract latency of one pulse, and of one row read: the read pulse, then each ADC
        converts its ``cols_per_adc`` columns in turn: ``t_read + cols_per_adc * t_adc``."""
        return self.t_read + self.cols_per_adc * self.t_adc


DEFAULT = CrossbarParams()
# tile geometry per preset; the ``crossbar`` unit built from these holds one tile (the
# controller presets in sim/crossbar_ctrl.py size the physical tile count for a layer)
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, rows=64, cols=64, tiles=1, act_bits=5),
    "minilm": dataclasses.replace(DEFAULT, rows=128, cols=128, tiles=1, act_bits=5),
    "bert-base": dataclasses.replace(DEFAULT, rows=256, cols=256, tiles=1, act_bits=5),
    "bert-large": dataclasses.replace(DEFAULT, rows=256, cols=256, tiles=1, act_bits=5),
}


def slices_of(weight_bits, cell_bits):
    return -(-weight_bits // cell_bits)


def pulses_of(bits, dac_bits):
    """Input pulses per inlier of ``bits`` bits: magnitude digits plus the sign pulse."""
    return -(-(bits - 1) // dac_bits) + 1


def exact_adc_bits(rows, cell_bits, dac_bits):
    return (rows * ((1 << dac_bits) - 1) * ((1 << cell_bits) - 1)).bit_length()


def tiles_needed(k, n, params):
    """(row tiles, column groups) a K x N layer occupies."""
    return -(-k // params.rows), -(-n // params.channels)


def segment_rows(block, rows):
    """Rows of one segment (a tile's rows inside one block): ``min(block, rows)``."""
    if block % rows and rows % block:
        raise ValueError(f"block {block} and rows {rows} must divide one another")
    return min(block, rows)


def pulse_digits(q, bits, dac_bits):
    """Input digits per pulse: int64 array (P, *q.shape) and shift-add weights (P,)."""
    q = np.asarray(q, dtype=np.int64)
    low = q & ((1 << (bits - 1)) - 1)
    npulse = pulses_of(bits, dac_bits)
    dig = [(low >> (j * dac_bits)) & ((1 << dac_bits) - 1) for j in range(npulse - 1)]
    dig.append((q < 0).astype(np.int64))
    wts = [1 << (j * dac_bits) for j in range(npulse - 1)] + [-(1 << (bits - 1))]
    return np.stack(dig), np.array(wts, dtype=np.int64)


def bit_slices(w_int, params):
    """Cells of each weight: int64 array (slices, K, N), slice ``s`` = bits ``s*c..`` of ``U``."""
    u = np.asarray(w_int, dtype=np.int64) + params.offset
    c = params.cell_bits
    return np.stack([(u >> (s * c)) & ((1 << c) - 1) for s in range(params.slices)])


def mvm(digits, cells, params, rng=None):
    """ADC codes of one pulse: digits (M, S, L) on S segments of cells (S, L, N) -> (M, S, N).

    Exact integer column sums (computed in float64, exact below 2**53), then the ADC.
    The sum is rounded half to even: a no-op unless noise or faults made the cells
    non-integer.
    """
    d = np.asarray(digits, dtype=np.float64).transpose(1, 0, 2)       # (S, M, L)
    colsum = np.matmul(d, np.asarray(cells, dtype=np.float64)).transpose(1, 0, 2)
    colsum = np.rint(colsum)
    hi = params.adc_max if params.adc_bits else np.inf
    return np.clip(colsum, 0, hi).astype(np.int64)


def inlier_terms(q, w_int, fmt, params):
    """Exact integer inlier term of every block as the crossbar computes it: (M, nb, N).

    ``q`` (M, nb, B) inliers (0 at outliers), ``w_int`` (K, N). Emulates every pulse, slice,
    segment and column with the ADC of ``params``; equals ``einsum(q, w)`` when the ADC is exact.
    """
    q = np.asarray(q, dtype=np.int64)
    m, nb, b = q.shape
    k, n = np.shape(w_int)
    seg = segment_rows(b, params.rows)
    nseg = k // seg
    digits, wts = pulse_digits(q.reshape(m, nseg, seg), fmt.bits, params.dac_bits)
    cells = bit_slices(w_int, params).reshape(params.slices, nseg, seg, n)
    rng = None
    if params.noise:
        rng = np.random.default_rng(params.seed)
        cells = cells + params.noise * rng.standard_normal(cells.shape)
    if params.faults is not None:
        cells = params.faults.apply(cells, params)
    t = np.zeros((m, nseg, n), dtype=np.int64)
    for p in range(len(wts)):
        for s in range(params.slices):
            code = mvm(digits[p], cells[s], params, rng)
            t += wts[p] * (1 << (s * params.cell_bits)) * code
    t = t.reshape(m, nb, b // seg, n).sum(axis=2)
    return t - params.offset * q.sum(axis=2)[:, :, None]


def accumulate(t_in, blocks, fmt, w_int, *, frac_bits=16):
    """``sim.fixed.mxop_dot`` with the given inlier terms ``t_in`` (M, nb, N).

    Same anchor (max live term exponent), same floor alignment, same outlier terms (one-hot
    row read of ``w_int`` times the outlier's significand); returns ``(acc, lsb_exp, nan)``.
    """
    exp, q, out_idx, out_val = blocks
    m_rows, nb, b = q.shape
    w = np.asarray(w_int, dtype=np.int64)
    n = w.shape[1]
    exp = np.asarray(exp, dtype=np.int64)
    e_in = np.broadcast_to(mxop.scale_exp(exp, fmt.bits)[:, :, None], t_in.shape)
    live_in = np.broadcast_to(((exp != 0) & (exp != mxop.EXP_NAN))[:, :, None], t_in.shape)
    nan = np.broadcast_to(np.any(exp == mxop.EXP_NAN, axis=1)[:, None], (m_rows, n))
    terms, exps, lives = [t_in], [e_in], [live_in]
    if fmt.outliers:
        om, oe = bf16.to_fixed(out_val)
        gi = out_idx.astype(np.int64) + (np.arange(nb) * b)[None, :, None]
        wsel = w[gi]
        terms.append((om[..., None] * wsel).reshape(m_rows, -1, n))
        exps.append(np.broadcast_to(oe[..., None], wsel.shape).reshape(m_rows, -1, n))
        lives.append(np.broadcast_to((om != 0)[..., None], wsel.shape).reshape(m_rows, -1, n))
        nan = nan | np.any(~bf16.is_finite(out_val), axis=(1, 2))[:, None]
    t = np.concatenate(terms, axis=1)
    e = np.concatenate(exps, axis=1)
    live = np.concatenate(lives, axis=1)
    anchor = np.max(np.where(live, e, fixed._NO_TERM), axis=1)
    has = anchor > fixed._NO_TERM
    lsb = np.where(has, anchor - frac_bits, 0)
    acc = np.sum(np.where(live, fixed.align(t, e, lsb[:, None, :]), 0), axis=1)
    return acc, lsb, nan


def _check_operands(x, w_int, scale, bias, params):
    x = np.asarray(x, dtype=np.uint16)
    w = np.asarray(w_int, dtype=np.int64)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"x must be (M, K) and w (K, N), not {x.shape} and {w.shape}")
    lo, hi = -(1 << (params.weight_bits - 1)), (1 << (params.weight_bits - 1)) - 1
    if w.size and (w.min() < lo or w.max() > hi):
        raise ValueError(f"weights must be {params.weight_bits}-bit signed ({lo}..{hi})")
    n = w.shape[1]
    scale = np.broadcast_to(np.asarray(scale, dtype=np.uint16), (n,))
    bias = np.broadcast_to(np.asarray(bias, dtype=np.uint16), (n,))
    return x, w, scale, bias


def linear(x_bf16, w_int, scale_bf16, bias_bf16, fmt, params, *, frac_bits=16):
    """bf16 ``(x @ w) * scale + bias`` as the crossbar computes it: (M, N) bf16 patterns.

    ``x_bf16`` (M, K) is MX-OP encoded with ``fmt.for_length(K)``; ``w_int`` (K, N) signed
    ``weight_bits``-bit; ``scale_bf16``, ``bias_bf16`` (N,) per output channel. Inliers go
    through the emulated crossbar (pulses, slices, segments, ADC); outliers through one-hot
    row reads; alignment and the one RNE rounding are ``sim.fixed``'s.
    """
    x, w, scale, bias = _check_operands(x_bf16, w_int, scale_bf16, bias_bf16, params)
    f = fmt.for_length(x.shape[1])
    blocks = mxop.encode(x, f)
    if params.adc_exact and not params.noise and params.faults is None:
        acc, lsb, nan = fixed.mxop_dot(blocks, f, w, frac_bits=frac_bits)
    else:
        t_in = inlier_terms(blocks.q, w, f, params)
        acc, lsb, nan = accumulate(t_in, blocks, f, w, frac_bits=frac_bits)
    return fixed.affine_round(acc, lsb, scale[None, :], bias[None, :], nan)
