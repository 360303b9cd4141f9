"""The accelerator: BERT encoder layers end to end, every layer's weights on chip.

The encoder is the top that chains the units (docs/encoder.md): ``crossbar_ctrl`` runs the
four linear layers, ``mixed_array`` the attention products, ``mxq`` encodes every matmul input,
``softmax``, ``layernorm`` and ``gelu`` the nonlinear steps. Around them it has the on-chip
buffers and a sequencer. Each unit sits behind a small adapter (the ``_Quantizer`` and
``_Crossbar`` classes, the beat builder of the attention engine), so a unit's interface change
stays local.
"""

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim import bf16, quant
from sim.crossbar_ctrl import COUNTERS as XBAR_COUNTERS
from sim.encoder import (PRESETS, XBAR_EVENTS, EncoderParams, encoder, program_memories,
                         PROGRAM, xbar_bank, xbar_params)
from sim.mxq import MXQParams

from .common import SRAM, Unit
from .crossbar_ctrl import CrossbarCtrl
from .gelu import Gelu
from .layernorm import LayerNorm
from .mixed_array import MixedArray, mixed_array_input_layout
from .mxq import MXQ
from .softmax import Softmax

__all__ = ["Encoder", "seq_layout", "token_layout", "out_layout", "prog_layout",
           "counter_layout", "PHASES", "UNITS", "EVENTS", "UNIT"]

COUNTER_WIDTH = 48
ONE = 0x3F80                  # bf16 1.0
PHASES = ("load", "qkv", "enc", "att", "o", "ffn1", "ffn2", "store")
"""Phases of the sequencer: receive a sentence; per layer: QKV, the encoding of Q, K and V
for attention, attention, O with add+LN1, FFN1 with GELU, FFN2 with add+LN2, send the layer's
output."""
UNITS = ("crossbar", "mixed_array", "softmax", "layernorm", "gelu", "mxq")
"""Units with a busy-cycle counter."""
EVENTS = XBAR_EVENTS + ("array_mults", "array_fp_ops", "softmax_elems", "layernorm_elems",
                        "gelu_elems", "mxq_elems", "tokens", "sentences")
"""Event counters (``sim.encoder.model`` gives the same dict): the crossbar controllers'
events summed, then those of the other units."""


def _bits_for(n):
    return max(1, (n - 1).bit_length())


def seq_layout(params):
    """One sentence job: ``length`` tokens (1..max_len), run layers ``first`` .. ``first +
    count - 1``."""
    p = params
    return data.StructLayout({"length": unsigned((p.max_len).bit_length()),
                              "first": unsigned(_bits_for(p.layers)),
                              "count": unsigned(p.layers.bit_length())})


def token_layout(params):
    """One token: its hidden vector, ``hidden`` bf16 patterns (element 0 in the low bits)."""
    return data.StructLayout({"x": data.ArrayLayout(unsigned(16), params.hidden)})


def out_layout(params):
    """One output token: a layer's output vector, the layer, ``last`` on the sentence's last
    token of that layer."""
    p = params
    return data.StructLayout({"y": data.ArrayLayout(unsigned(16), p.hidden),
                              "layer": unsigned(_bits_for(p.layers)), "last": unsigned(1)})


def prog_layout(params):
    """One programming beat: write ``data`` (low bits) to word ``addr`` of memory ``sel``
    (``sim.encoder.PROGRAM`` order; contents in ``sim.encoder.memory_image``)."""
    mems = program_memories(params)
    return data.StructLayout({
        "sel": unsigned(_bits_for(len(PROGRAM))),
        "addr": unsigned(_bits_for(max(m["depth"] for m in mems.values()))),
        "data": unsigned(max(m["width"] for m in mems.values()))})


def counter_layout(params):
    """The counters: cycles per phase (``cycles_<phase>``), busy cycles per unit
    (``busy_<unit>``) and events, each 48 bits."""
    names = ([f"cycles_{p}" for p in PHASES] + [f"busy_{u}" for u in UNITS] + list(EVENTS))
    return data.StructLayout({n: unsigned(COUNTER_WIDTH) for n in names})


# ------------------------------------------------------------------------------------------
# small building blocks
# ------------------------------------------------------------------------------------------

class _ReadPipe:
    """Reads of a memory read port as a stream: requests (address, tag) go in while there is
    room; words come out of a small FIFO in order, with their tag. Sync read (one cycle)."""

    def __init__(self, m, name, addr, en, rdata, *, tag_width=1, depth=4):
        self.addr = Signal(len(addr), name=f"{name}_raddr")
        self.tag = Signal(tag_width, name=f"{name}_tag")
        self.valid = Signal(name=f"{name}_req")
        self.ready = Signal(name=f"{name}_room")
        w = len(rdata)
        m.submodules[f"{name}_fifo"] = f = fifo.SyncFIFOBuffered(width=w + tag_width,
                                                                 depth=depth)
        inflight = Signal(name=f"{name}_inflight")
        tag_d = Signal(tag_width, name=f"{name}_tag_d")
        fire = self.valid & self.ready
        m.d.comb += [self.ready.eq(f.level + inflight < depth), addr.eq(self.addr),
                     en.eq(fire), f.w_en.eq(inflight), f.w_data.eq(Cat(rdata, tag_d))]
        m.d.sync += inflight.eq(fire)
        with m.If(fire):
            m.d.sync += tag_d.eq(self.tag)
        self.out_valid = f.r_rdy
        self.out_ready = f.r_en
        self.out_data = f.r_data[:w]
        self.out_tag = f.r_data[w:]
        self.busy = inflight | f.r_rdy | (f.level != 0)


def _sign_mag(v, bits):
    """``bits``-bit sign-magnitude code of the signed value ``v`` (|v| < 2**(bits - 1)): the
    operand format of the mixed array (``sim.mixed_array.to_sign_magnitude``)."""
    return Mux(v < 0, Cat((-v)[:bits - 1], Const(1, 1)), v[:bits - 1])


def _counter(m, sig, inc):
    with m.If(inc):
        m.d.sync += sig.eq(sig + 1)


# ------------------------------------------------------------------------------------------
# unit adapters
# ------------------------------------------------------------------------------------------

class _Quantizer:
    """An MX-OP encoding role: one ``mxq`` (one lane), its inlier width chosen per block.

    Input: ``i_valid``, ``i_x`` (bf16), ``i_last`` (the block's last element: a block may
    end early, and is then encoded as the zero-padded block, ``sim.mxq.mxq``), ``i_ready``;
    ``bits`` (drive with ``select``) is the block's inlier width. Output: ``o_valid``,
    ``o_ready`` and the element (``o_q`` signed 8, ``o_outlier``, ``o_value``, ``o_exp``,
    ``o_index`` in the block, ``o_last``).
    """

    def __init__(self, m, name, *, block, outliers, bits_list):
        self.bits_list = tuple(bits_list)
        self.unit = u = MXQ(MXQParams(block=block, outliers=outliers, bits=max(bits_list),
                                      lanes=1))
        m.submodules[name] = u
        self.i_valid, self.i_ready = u.i.valid, u.i.ready
        self.i_x, self.i_last, self.bits = u.i.payload.x[0], u.i.payload.last, u.i.payload.bits
        e = u.o.payload.lane[0]
        self.o_valid, self.o_ready = u.o.valid, u.o.ready
        self.o_q = Signal(signed(8), name=f"{name}_o_q")        # sign-extended to 8 bits
        m.d.comb += self.o_q.eq(e.q)
        self.o_outlier, self.o_value, self.o_exp = e.outlier, e.value, e.exp
        self.o_index, self.o_last = u.o.payload.index, u.o.payload.last
        self.fire_in = self.i_valid & self.i_ready
        self.fire_out = self.o_valid & self.o_ready
        self.active = self.i_valid

    def select(self, m, bits):
        """Drive the inlier width (comb) from a runtime value ``bits``."""
        m.d.comb += self.bits.eq(bits)


class _Crossbar:
    """The four linear layers on crossbar controllers (``crossbar_ctrl``).

    One controller per (linear, weight bits) the policy uses, sized for the widest inliers
    its layers use, with one bank of tiles per layer it serves (``sim.encoder.xbar_params``);
    ``sel`` picks it for a job, and the job beat gives the layer's own inlier width
    (``act_bits``) and bank. A job is an ``i_layer`` beat, the N scale/bias beats, the
    layer's weight rows unless its bank holds them (``keep``), then the vectors. A bank is
    programmed by the first job of its layer after reset or after the programming port wrote
    the linear's weights (``loaded``); from then on the weights stay in the tiles. Streams
    are muxed by ``sel``; counters are summed over the controllers.
    """

    def __init__(self, m, params):
        p = params
        self.keys = []
        for lin in quant.LINEARS:
            for l in range(p.layers):
                key = (lin, p.wbits(l, lin))
                if key not in self.keys:
                    self.keys.append(key)
        self.sel = Signal(range(max(len(self.keys), 2)), name="xb_sel")
        self.bank = Signal(range(max(p.layers, 2)), name="xb_bank")
        self.keep = Signal(name="xb_keep")
        self.loaded = {lin: Signal(p.layers, name=f"xb_loaded_{lin}") for lin in quant.LINEARS}
        self.ctrls = []
        ports = ("i_layer", "i_sb", "i_w", "i_x", "o")
        self.valid = {n: Signal(name=f"xb_{n}_valid") for n in ports}
        self.ready = {n: Signal(name=f"xb_{n}_ready") for n in ports}
        self.vectors = Signal(24, name="xb_vectors")
        self.act_bits = Signal(4, name="xb_act_bits")
        self.sb = Signal(32, name="xb_sb")
        self.w = Signal(max(m_["width"] for n_, m_ in program_memories(p).items()
                            if n_.startswith("w_")), name="xb_w")
        self.x_q = Signal(signed(8), name="xb_x_q")
        self.x_outlier, self.x_value, self.x_exp = (Signal(name="xb_x_outlier"),
                                                    Signal(16, name="xb_x_value"),
                                                    Signal(8, name="xb_x_exp"))
        self.y = Signal(16, name="xb_y")
        self.counters = {n: Signal(COUNTER_WIDTH, name=f"xb_{n}")
                         for n in XBAR_COUNTERS + ("emu_stall", "emu_ahead")}
        sums = {n: 0 for n in self.counters}
        for n, (lin, wbits) in enumerate(self.keys):
            layer = next(l for l in range(p.layers) if p.wbits(l, lin) == wbits)
            c = CrossbarCtrl(xbar_params(p, lin, layer))
            m.submodules[f"xbar_{lin}_{wbits}"] = c
            self.ctrls.append(c)
            mine = self.sel == n
            for name in ports:
                port = getattr(c, name)
                if name == "o":
                    m.d.comb += port.ready.eq(self.ready[name] & mine)
                else:
                    m.d.comb += port.valid.eq(self.valid[name] & mine)
            m.d.comb += [c.i_layer.payload.vectors.eq(self.vectors),
                         c.i_layer.payload.act_bits.eq(self.act_bits),
                         c.i_layer.payload.bank.eq(self.bank),
                         c.i_layer.payload.keep.eq(self.keep),
                         c.i_sb.payload.as_value().eq(self.sb),
                         c.i_w.payload.as_value().eq(self.w),
                         c.i_x.payload.q.eq(self.x_q), c.i_x.payload.outlier.eq(self.x_outlier),
                         c.i_x.payload.value.eq(self.x_value), c.i_x.payload.exp.eq(self.x_exp)]
            with m.If(mine):
                for name in ports:
                    port = getattr(c, name)
                    if name == "o":
                        m.d.comb += [self.valid[name].eq(port.valid), self.y.eq(port.payload.y)]
                    else:
                        m.d.comb += self.ready[name].eq(port.ready)
            for k in sums:
                sums[k] = sums[k] + getattr(c, k)
        for k, v in sums.items():
            m.d.comb += self.counters[k].eq(v)

    def select(self, m, lin, layer, params):
        """Drive ``sel``, ``act_bits``, ``bank`` and ``keep`` (comb) for linear ``lin`` at
        runtime ``layer``."""
        p = params
        with m.Switch(layer):
            for l in range(p.layers):
                with m.Case(l):
                    m.d.comb += [self.sel.eq(self.keys.index((lin, p.wbits(l, lin)))),
                                 self.act_bits.eq(p.bits(l, lin)),
                                 self.bank.eq(xbar_bank(p, lin, l)),
                                 self.keep.eq(self.loaded[lin][l])]


# ------------------------------------------------------------------------------------------
# the encoder
# ------------------------------------------------------------------------------------------

class Encoder(wiring.Component):
    """Run BERT encoder layers on a sentence: every layer's output, bit-exact with the golden.

    The weights of every layer are programmed once through ``i_w`` (or preloaded) and stay
    on chip. A sentence job (``i_seq``: its length and the layers to run) is followed by its
    tokens on ``i``; the encoder stores them, runs the layers one after another and sends
    each layer's output tokens on ``o``. Numerics are ``sim.encoder.encoder``, i.e.
    ``sim.quant.layer`` per layer (docs/encoder.md, docs/model.md).

    Parameters
    ----------
    params : sim.encoder.EncoderParams

    Members
    -------
    i_w : In(stream.Signature(prog_layout(params)))
        Programming beats (``sim.encoder.program_beats``): weight rows, scales and biases,
        layernorm parameters. Accepted whenever no sentence is running (ready low while one
        runs).
    i_seq : In(stream.Signature(seq_layout(params)))
        One beat per sentence: ``length`` (1..max_len), ``first`` layer and ``count`` of
        layers. Accepted when the previous sentence has been sent out. A job outside those
        ranges (length 0 or above max_len, no layers, layers past the last) is dropped: no
        tokens are taken for it and nothing is sent.
    i : In(stream.Signature(token_layout(params)))
        The sentence's ``length`` tokens, bf16 hidden vectors (the embedding output for
        layer 0).
    o : Out(stream.Signature(out_layout(params)))
        For every layer run, its output tokens in order, ``last`` on the last one.
    counters : Out(counter_layout(params))
        Cycles per phase (except cycles waiting for ``i`` or ``o``), busy cycles per unit
        and event counts since reset; ``sim.encoder.model`` predicts every one of them.
    """

    def __init__(self, params):
        if not isinstance(params, EncoderParams):
            raise TypeError(f"params must be EncoderParams, not {params!r}")
        self.params = params
        super().__init__({
            "i_w": In(stream.Signature(prog_layout(params))),
            "i_seq": In(stream.Signature(seq_layout(params))),
            "i": In(stream.Signature(token_layout(params))),
            "o": Out(stream.Signature(out_layout(params))),
            "counters": Out(counter_layout(params)),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        H, I, NH, DH, NL, LM = (p.hidden, p.intermediate, p.heads, p.d_head, p.layers,
                                p.max_len)
        B, K, BQ, LN_, W = p.block, p.outliers, p.qk_block, p.lanes, p.width
        LG = -(-LM // LN_) * LN_                  # longest softmax row
        NBP = -(-LG // B)                         # most P blocks
        NBK = DH // BQ                            # Q/K blocks per head
        GM = LG // LN_                            # most key groups
        cnt = SimpleNamespace(**{n: Signal(COUNTER_WIDTH, name=f"n_{n}")
                                 for n, _ in counter_layout(p)})
        m.d.comb += [getattr(self.counters, n).eq(getattr(cnt, n)) for n, _ in
                     counter_layout(p)]
        self._cnt = cnt

        # -- units ---------------------------------------------------------------------------
        xb = _Crossbar(m, p)
        arr = MixedArray(p.mixed_array)
        sm = Softmax(p.softmax)
        ln = LayerNorm(p.layernorm)
        ge = Gelu(p.gelu)
        m.submodules.array, m.submodules.softmax = arr, sm
        m.submodules.layernorm, m.submodules.gelu = ln, ge

        def sites(site):
            return sorted({p.bits(l, site) for l in range(NL)})
        lin_blocks = sorted({min(B, H), min(B, I)})
        q_lin = {b: _Quantizer(m, f"mxq_lin{b}", block=b, outliers=K,
                               bits_list=sorted({p.bits(l, s) for l in range(NL)
                                                 for s in quant.LINEARS
                                                 if min(B, p.lin_shape(s)[0]) == b}))
                 for b in lin_blocks}
        q_q = _Quantizer(m, "mxq_q", block=BQ, outliers=K, bits_list=sites("qk"))
        KV = p.kv_bits
        q_k = _Quantizer(m, "mxq_k", block=BQ, outliers=0, bits_list=(KV,))
        q_v = _Quantizer(m, "mxq_v", block=B, outliers=0, bits_list=(KV,))
        q_p = _Quantizer(m, "mxq_p", block=B, outliers=K, bits_list=sites("pv"))
        quantizers = list(q_lin.values()) + [q_q, q_k, q_v, q_p]
        q_k.select(m, KV)
        q_v.select(m, KV)

        # -- memories ------------------------------------------------------------------------
        mems = program_memories(p)
        prog = {name: SRAM(m, name, width=mems[name]["width"], depth=mems[name]["depth"])
                for name in PROGRAM}
        xbuf = SRAM(m, "xbuf", width=16, depth=LM * H)      # X, then the layer output
        cbuf = SRAM(m, "cbuf", width=16, depth=LM * H)      # V (bf16), then the context
        x1buf = SRAM(m, "x1buf", width=16, depth=LM * H)    # LN1 output
        hbuf = SRAM(m, "hbuf", width=16, depth=LM * I)      # Q|K rows, then the GELU output
        stage = SRAM(m, "stage", width=16, depth=2 * I)     # FFN1 rows before GELU
        qn = p.mixed_array.bits                 # Q inliers as the array's sign-magnitude codes
        eq_layout = data.StructLayout({
            "q": data.ArrayLayout(signed(qn), BQ), "exp": unsigned(8),
            "idx": data.ArrayLayout(unsigned(_bits_for(BQ)), max(K, 1)),
            "val": data.ArrayLayout(unsigned(16), max(K, 1))})
        eqbuf = SRAM(m, "eqbuf", width=eq_layout.size, depth=LM * NH * NBK)
        kq = SRAM(m, "kq", width=LN_ * W * 8, depth=GM * NH * (DH // W), granularity=8)
        ke = SRAM(m, "ke", width=LN_ * 8, depth=GM * NH * NBK, granularity=8)
        VT = NBP * B // W                                   # token chunks of V
        vq = SRAM(m, "vq", width=LN_ * W * 8, depth=NH * (DH // LN_) * VT, granularity=8)
        ve = SRAM(m, "ve", width=LN_ * 8, depth=NH * (DH // LN_) * NBP, granularity=8)

        # -- sequencer -----------------------------------------------------------------------
        L = Signal(range(LM + 1))               # sentence length
        layer = Signal(range(NL))
        last_layer = Signal(range(NL))
        go = Signal()                           # one cycle at the start of every phase
        phase = Signal(range(len(PHASES) + 1), init=len(PHASES))   # PHASES index or idle
        done = Signal()                         # the running phase finishes this cycle
        wait = Signal()                         # the running phase waits on i or o
        IDLE = len(PHASES)
        P = {n: i for i, n in enumerate(PHASES)}
        running = phase != IDLE
        m.d.comb += self.i_seq.ready.eq(~running & ~go)
        m.d.comb += self.i_w.ready.eq(~running)
        job = self.i_seq.payload
        job_ok = ((job.length != 0) & (job.length <= LM) & (job.count != 0)
                  & (job.first + job.count <= NL))
        with m.If(self.i_seq.valid & self.i_seq.ready & job_ok):
            m.d.sync += [L.eq(job.length), layer.eq(job.first),
                         last_layer.eq(job.first + job.count - 1), phase.eq(P["load"]),
                         go.eq(1)]
            _counter(m, cnt.sentences, 1)
        with m.Elif(running & done):
            m.d.sync += go.eq(1)
            with m.Switch(phase):
                for name in PHASES[:-1]:
                    with m.Case(P[name]):
                        m.d.sync += phase.eq(P[PHASES[PHASES.index(name) + 1]])
                with m.Case(P["store"]):
                    with m.If(layer == last_layer):
                        m.d.sync += [phase.eq(IDLE), go.eq(0)]
                    with m.Else():
                        m.d.sync += [layer.eq(layer + 1), phase.eq(P["qkv"])]
        with m.Else():
            m.d.sync += go.eq(0)
        # Phase cycles are chip time: a crossbar operation counts its contract time however
        # long the emulated tiles take (docs/crossbar.md, "Counting chip time"), so the
        # controllers' emu_ahead credit is added and their emu_stall cycles taken off.
        emu = Signal(COUNTER_WIDTH)
        emu_d = Signal(COUNTER_WIDTH)
        m.d.sync += emu.eq(xb.counters["emu_ahead"] - xb.counters["emu_stall"])
        m.d.comb += emu_d.eq(xb.counters["emu_ahead"] - xb.counters["emu_stall"] - emu)
        for name in PHASES:
            c = getattr(cnt, f"cycles_{name}")
            with m.If(phase == P[name]):
                m.d.sync += c.eq(c + ~wait + emu_d)
        # derived lengths, fixed while a sentence runs
        G = Signal(range(GM + 1))               # key groups ceil(L / lanes)
        LGr = Signal(range(LG + 1))             # softmax row length G * lanes
        NBPr = Signal(range(NBP + 1))           # P blocks
        m.d.comb += [G.eq((L + LN_ - 1) // LN_), LGr.eq(G * LN_), NBPr.eq((LGr + B - 1) // B)]

        # -- programming port -----------------------------------------------------------------
        pw = self.i_w.payload
        for s, name in enumerate(PROGRAM):
            mem = prog[name]
            m.d.comb += [mem.waddr.eq(pw.addr), mem.wdata.eq(pw.data),
                         mem.wen.eq(self.i_w.valid & ~running & (pw.sel == s))]
            if name.startswith("w_"):               # the tiles no longer hold these weights
                with m.If(mem.wen):
                    m.d.sync += xb.loaded[name[2:]].eq(0)

        # -- LOAD: tokens in --------------------------------------------------------------
        ld_hold = Signal(16 * H)
        ld_e = Signal(range(H))
        ld_have = Signal()
        ld_tok = Signal(range(LM + 1))
        ld_addr = Signal(range(LM * H))
        in_load = phase == P["load"]
        take = in_load & ~go & (~ld_have | (ld_e == H - 1)) & (ld_tok != L)
        m.d.comb += self.i.ready.eq(take)
        with m.If(go & in_load):
            m.d.sync += [ld_tok.eq(0), ld_addr.eq(0), ld_have.eq(0), ld_e.eq(0)]
        with m.Else():
            with m.If(ld_have):
                m.d.sync += [ld_hold.eq(ld_hold >> 16), ld_e.eq(ld_e + 1),
                             ld_addr.eq(ld_addr + 1)]
                with m.If(ld_e == H - 1):
                    m.d.sync += [ld_have.eq(0), ld_e.eq(0)]
            with m.If(self.i.valid & take):
                m.d.sync += [ld_hold.eq(self.i.payload.x.as_value()), ld_have.eq(1),
                             ld_tok.eq(ld_tok + 1), ld_e.eq(0)]
        ld_w_en = ld_have
        m.d.comb += [wait.eq(in_load & ~ld_have & ~go & (ld_tok != L))]
        load_done = in_load & ~go & ~ld_have & (ld_tok == L)

        # -- STORE: tokens out ------------------------------------------------------------
        st_tok = Signal(range(LM + 1))
        st_e = Signal(range(H + 1))
        st_addr = Signal(range(LM * H + 1))
        st_rd = Signal()                       # a read issued last cycle
        st_hold = Signal(16 * H)
        in_store = phase == P["store"]
        st_full = Signal()
        with m.If(go & in_store):
            m.d.sync += [st_tok.eq(0), st_e.eq(0), st_addr.eq(0), st_full.eq(0)]
        st_issue = in_store & ~go & ~st_full & (st_e != H) & (st_tok != L)
        m.d.sync += st_rd.eq(st_issue)
        with m.If(st_issue):
            m.d.sync += [st_e.eq(st_e + 1), st_addr.eq(st_addr + 1)]
        with m.If(st_rd):
            m.d.sync += st_hold.eq(Cat(st_hold[16:], xbuf.rdata[0]))
            with m.If(st_e == H):
                m.d.sync += st_full.eq(1)
        m.d.comb += [self.o.valid.eq(st_full), self.o.payload.y.as_value().eq(st_hold),
                     self.o.payload.layer.eq(layer), self.o.payload.last.eq(st_tok == L - 1)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [st_full.eq(0), st_e.eq(0), st_tok.eq(st_tok + 1)]
            _counter(m, cnt.tokens, 1)
        store_done = in_store & ~go & (st_tok == L)
        with m.If(in_store & st_full & ~self.o.ready):
            m.d.comb += wait.eq(1)

        # -- linear phases --------------------------------------------------------------------
        lin_phase = Signal()
        m.d.comb += lin_phase.eq((phase == P["qkv"]) | (phase == P["o"]) | (phase == P["ffn1"])
                                 | (phase == P["ffn2"]))
        with m.Switch(phase):
            for lin in quant.LINEARS:
                with m.Case(P[lin]):
                    xb.select(m, lin, layer, p)
        lin_done = self._linear(m, p, xb, q_lin, ln, ge, prog, xbuf, cbuf, x1buf, hbuf,
                                stage, L, layer, phase, P, go, lin_phase)

        # -- Q, K, V encoding ----------------------------------------------------------------
        enc_done = self._enc(m, p, q_q, q_k, q_v, hbuf, cbuf, eqbuf, eq_layout, kq, ke, vq, ve,
                             L, NBPr, layer, phase == P["enc"], go)

        # -- attention --------------------------------------------------------------------
        att_done = self._attention(m, p, arr, sm, q_p, eqbuf, eq_layout, kq, ke, vq, ve, cbuf,
                                   L, G, LGr, NBPr, layer, phase == P["att"], go)

        m.d.comb += done.eq(Mux(in_load, load_done, 0) | store_done | lin_done | enc_done
                            | att_done)

        # xbuf ports: port 0 reads (store, qkv feed), port 1 reads (LN2 residual... see _linear)
        # writes: load, LN2 output (in _linear)
        self._xbuf_load = (ld_w_en, ld_addr, ld_hold[:16])
        with m.If(in_store):
            m.d.comb += [xbuf.raddr[0].eq(st_addr), xbuf.ren[0].eq(st_issue)]
        with m.If(ld_w_en):
            m.d.comb += [xbuf.waddr.eq(ld_addr), xbuf.wdata.eq(ld_hold[:16]), xbuf.wen.eq(1)]

        # -- busy and event counters -----------------------------------------------------------
        m.d.comb += [cnt.busy_crossbar.eq(xb.counters["cycles"]),
                     cnt.busy_mixed_array.eq(arr.busy_cycles),
                     cnt.array_mults.eq(arr.mults), cnt.array_fp_ops.eq(arr.fp_ops)]
        m.d.comb += [getattr(cnt, n).eq(xb.counters[n]) for n in XBAR_EVENTS]
        for unit, i_port, o_port, elems in (
                ("softmax", sm.i, sm.o, cnt.softmax_elems),
                ("layernorm", ln.i, ln.o, cnt.layernorm_elems),
                ("gelu", ge.i, ge.o, cnt.gelu_elems)):
            self._busy(m, unit, i_port.valid, i_port.ready, o_port.valid, o_port.ready,
                       getattr(cnt, f"busy_{unit}"), elems)
        # mxq: any role holding or receiving work (zero padding included)
        flight = Signal(16)
        ins = sum(q.fire_in for q in quantizers)
        outs = sum(q.fire_out for q in quantizers)
        m.d.sync += flight.eq(flight + ins - outs)
        _counter(m, cnt.busy_mxq, (flight != 0) | Cat(*[q.active for q in quantizers]).any())
        m.d.sync += cnt.mxq_elems.eq(cnt.mxq_elems + ins)
        return m

    def _linear(self, m, p, xb, q_lin, ln, ge, prog, xbuf, cbuf, x1buf, hbuf, stage, L,
                layer, phase, P, go, lin_phase):
        """QKV, O + add&LN1, FFN1 + GELU, FFN2 + add&LN2: one crossbar job of L vectors
        each. The crossbar's outputs go into buffers; a finished row then streams through
        layernorm or GELU while the crossbar computes the next, so no unit waits on the
        crossbar's output schedule. Returns the phase's ``done``."""
        H, I, NL, LM = p.hidden, p.intermediate, p.layers, p.max_len
        mems = program_memories(p)
        on = {lin: phase == P[lin] for lin in quant.LINEARS}
        LH = Signal(range(LM * H + 1))
        m.d.comb += LH.eq(L * H)

        # job beat, scales and biases, weight rows
        job_sent = Signal()
        with m.If(go):
            m.d.sync += job_sent.eq(0)
        m.d.comb += [xb.valid["i_layer"].eq(lin_phase & ~go & ~job_sent), xb.vectors.eq(L)]
        with m.If(xb.valid["i_layer"] & xb.ready["i_layer"]):
            m.d.sync += job_sent.eq(1)
            for lin in quant.LINEARS:
                with m.If(on[lin]):
                    m.d.sync += xb.loaded[lin].bit_select(layer, 1).eq(1)
        for lin in quant.LINEARS:
            for kind, port in (("sb", "i_sb"), ("w", "i_w")):
                name = f"{kind}_{lin}"
                mem = mems[name]
                ends = list(mem["base"][1:]) + [mem["depth"]]
                base = _rom(m, f"{name}_base", [int(b) for b in mem["base"]], layer)
                count = _rom(m, f"{name}_count",
                              [int(e - b) for b, e in zip(mem["base"], ends)], layer)
                if kind == "w":                         # none when the bank holds them
                    count = Mux(xb.keep, 0, count)
                rr = _RangeReader(m, f"rd_{name}", prog[name], 0, go & on[lin], base, count)
                with m.If(on[lin]):
                    m.d.comb += [xb.valid[port].eq(rr.valid), rr.ready.eq(xb.ready[port])]
                    m.d.comb += (xb.sb if kind == "sb" else xb.w).eq(rr.data)

        # feeder: a vector through mxq into a FIFO, the next one once the crossbar took it
        src = {"qkv": xbuf, "o": cbuf, "ffn1": x1buf, "ffn2": hbuf}
        f_addr = Signal(range(LM * I))
        f_en = Signal()
        f_data = Signal(16)
        fd = _ReadPipe(m, "feed", f_addr, f_en, f_data, tag_width=1)
        kin = Signal(range(I + 1))
        m.d.comb += kin.eq(Mux(on["ffn2"], I, H))
        n_in = Signal(range(LM * I + 1))              # elements requested
        v_left = Signal(range(I + 1))                 # of the vector being requested
        v_n = Signal(range(LM + 1))                   # vectors requested
        ahead = Signal(range(I + 8))                  # requested, not yet taken by the crossbar
        with m.If(go):
            m.d.sync += [n_in.eq(0), v_left.eq(0), v_n.eq(0)]
        with m.Elif(lin_phase & (v_left == 0) & (ahead == 0) & (v_n != L)):
            m.d.sync += [v_left.eq(kin), v_n.eq(v_n + 1)]
        m.d.comb += [fd.valid.eq(lin_phase & ~go & (v_left != 0)), fd.addr.eq(n_in)]
        fd_fire = fd.valid & fd.ready
        with m.If(fd_fire):
            m.d.sync += [n_in.eq(n_in + 1), v_left.eq(v_left - 1)]
        x_fire = xb.valid["i_x"] & xb.ready["i_x"]
        m.d.sync += ahead.eq(ahead + fd_fire - x_fire)
        xf = fifo.SyncFIFOBuffered(width=8 + 1 + 16 + 8, depth=max(H, I) + 4)
        m.submodules.xfifo = xf
        for lin in quant.LINEARS:
            blk = min(p.block, p.lin_shape(lin)[0])
            q = q_lin[blk]
            with m.If(on[lin]):
                m.d.comb += [fd.tag.eq(n_in[:blk.bit_length() - 1] == blk - 1),
                             src[lin].raddr[0].eq(f_addr), src[lin].ren[0].eq(f_en),
                             f_data.eq(src[lin].rdata[0]),
                             q.i_valid.eq(fd.out_valid), q.i_x.eq(fd.out_data),
                             q.i_last.eq(fd.out_tag), fd.out_ready.eq(q.i_ready),
                             xf.w_en.eq(q.o_valid), q.o_ready.eq(xf.w_rdy),
                             xf.w_data.eq(Cat(q.o_q, q.o_outlier, q.o_value, q.o_exp))]
                q.select(m, _rom(m, f"bits_{lin}", [p.bits(l, lin) for l in range(NL)],
                                 layer, 4))
        m.d.comb += [xb.valid["i_x"].eq(lin_phase & xf.r_rdy), xf.r_en.eq(xb.ready["i_x"]),
                     xb.x_q.eq(xf.r_data[:8]), xb.x_outlier.eq(xf.r_data[8]),
                     xb.x_value.eq(xf.r_data[9:25]), xb.x_exp.eq(xf.r_data[25:33])]

        # outputs into buffers: Q|K rows -> hbuf, V -> cbuf (QKV); O, F -> cbuf; FFN1 -> stage
        y, yv = xb.y, xb.valid["o"]
        m.d.comb += xb.ready["o"].eq(1)
        ch = Signal(range(3 * H))
        t_out = Signal(range(LM + 1))                 # rows completed by the crossbar
        n_ch = Signal(range(3 * H + 1))
        m.d.comb += n_ch.eq(Mux(on["qkv"], 3 * H, Mux(on["ffn1"], I, H)))
        a0 = Signal(range(LM * 2 * H + 1))            # hbuf (Q|K) / cbuf (O, F) address
        a1 = Signal(range(LM * H + 1))                # cbuf (V) address
        with m.If(go):
            m.d.sync += [ch.eq(0), t_out.eq(0), a0.eq(0), a1.eq(0)]
        with m.Elif(yv):
            m.d.sync += ch.eq(ch + 1)
            with m.If(ch == n_ch - 1):
                m.d.sync += [ch.eq(0), t_out.eq(t_out + 1)]
        with m.If(yv):
            with m.If(on["qkv"] & (ch < 2 * H)):
                m.d.comb += [hbuf.waddr.eq(a0), hbuf.wdata.eq(y), hbuf.wen.eq(1)]
                m.d.sync += a0.eq(a0 + 1)
            with m.If(on["qkv"] & (ch >= 2 * H)):
                m.d.comb += [cbuf.waddr.eq(a1), cbuf.wdata.eq(y), cbuf.wen.eq(1)]
                m.d.sync += a1.eq(a1 + 1)
            with m.If(on["o"] | on["ffn2"]):
                m.d.comb += [cbuf.waddr.eq(a0), cbuf.wdata.eq(y), cbuf.wen.eq(1)]
                m.d.sync += a0.eq(a0 + 1)
            with m.If(on["ffn1"]):
                m.d.comb += [stage.waddr.eq(Mux(t_out[0], I, 0) + ch), stage.wdata.eq(y),
                             stage.wen.eq(1)]

        # row passes: a finished row through add&LN (x + residual) or GELU, one at a time
        row_len = Signal(range(I + 1))
        m.d.comb += row_len.eq(Mux(on["ffn1"], I, H))
        r_done = Signal(range(LM + 1))                # rows passed completely
        r_req = Signal(range(I + 1))                  # elements left to request in the pass
        r_out = Signal(range(I + 1))                  # results written in the pass
        r_busy = Signal()
        r_addr = Signal(range(LM * H + 1))            # row base + element (cbuf, xbuf, x1buf)
        r_e = Signal(range(I + 1))
        w_addr = Signal(range(LM * I + 1))            # result address
        pa = Signal(range(max(LM * H, 2 * I)))
        pe = Signal()
        pd = Signal(32)
        pp = _ReadPipe(m, "pass", pa, pe, pd)
        with m.If(go):
            m.d.sync += [r_done.eq(0), r_busy.eq(0), r_addr.eq(0), w_addr.eq(0)]
        with m.Elif(lin_phase & ~on["qkv"] & ~r_busy & (r_done != t_out)):
            m.d.sync += [r_busy.eq(1), r_req.eq(row_len), r_out.eq(0), r_e.eq(0)]
        m.d.comb += [pp.valid.eq(r_busy & (r_req != 0)), pp.tag.eq(r_req == 1),
                     pp.addr.eq(Mux(on["ffn1"], Mux(r_done[0], I, 0) + r_e, r_addr))]
        with m.If(pp.valid & pp.ready):
            m.d.sync += [r_req.eq(r_req - 1), r_e.eq(r_e + 1), r_addr.eq(r_addr + 1)]
        for lin, rbuf in (("o", xbuf), ("ffn2", x1buf)):
            with m.If(on[lin]):
                m.d.comb += [cbuf.raddr[1].eq(pa), rbuf.raddr[1].eq(pa), cbuf.ren[1].eq(pe),
                             rbuf.ren[1].eq(pe), pd.eq(Cat(cbuf.rdata[1], rbuf.rdata[1])),
                             ln.i.valid.eq(pp.out_valid), pp.out_ready.eq(ln.i.ready),
                             ln.i.payload.x.eq(pp.out_data[:16]),
                             ln.i.payload.r.eq(pp.out_data[16:])]
        with m.If(on["ffn1"]):
            m.d.comb += [stage.raddr[1].eq(pa), stage.ren[1].eq(pe), pd.eq(stage.rdata[1]),
                         ge.i.valid.eq(pp.out_valid), pp.out_ready.eq(ge.i.ready),
                         ge.i.payload.data.eq(pp.out_data[:16]),
                         ge.i.payload.last.eq(pp.out_tag)]       # the row's last element
        m.d.comb += [ln.o.ready.eq(1), ge.o.ready.eq(1)]
        for lin, unit_o, buf in (("o", ln.o, x1buf), ("ffn2", ln.o, xbuf),
                                 ("ffn1", ge.o, hbuf)):
            with m.If(on[lin] & unit_o.valid):
                m.d.comb += [buf.waddr.eq(w_addr), buf.wdata.eq(unit_o.payload.data),
                             buf.wen.eq(1)]
                m.d.sync += [w_addr.eq(w_addr + 1), r_out.eq(r_out + 1)]
                with m.If(r_out == row_len - 1):
                    m.d.sync += [r_busy.eq(0), r_done.eq(r_done + 1)]
        # layernorm parameters: LN1 (O) or LN2 (FFN2) of the layer
        lnm = mems["ln"]
        ln_base = _rom(m, "ln_base", [int(b) for b in lnm["base"]], layer)
        lrr = _RangeReader(m, "rd_ln", prog["ln"], 0, go & (on["o"] | on["ffn2"]),
                           ln_base + Mux(on["ffn2"], H, 0), H)
        m.d.comb += [ln.i_param.valid.eq(lrr.valid), lrr.ready.eq(ln.i_param.ready),
                     ln.i_param.payload.as_value().eq(lrr.data)]
        done = Signal()
        m.d.comb += done.eq(lin_phase & ~go & job_sent & Mux(on["qkv"], t_out == L,
                                                              r_done == L))
        return done

    def _enc(self, m, p, q_q, q_k, q_v, hbuf, cbuf, eqbuf, eq_layout, kq, ke, vq, ve, L,
             NBPr, layer, on, go):
        """Q, K and V encoding, three streams at once: Q rows through mxq (MX-OP) into
        ``eqbuf`` (a word per token, head and block), K rows through mxq (MX-INT ``kv_bits``) into ``kq``
        / ``ke`` (lane-interleaved for the QK beats), V columns (tokens 0..L-1, zero padded to
        blocks of B) through mxq (MX-INT ``kv_bits``) into ``vq`` / ``ve``. Returns the phase's
        ``done``."""
        H, NH, DH, NL, LM = p.hidden, p.heads, p.d_head, p.layers, p.max_len
        B, K, BQ, LN_, W = p.block, p.outliers, p.qk_block, p.lanes, p.width
        KV = p.kv_bits
        NBK = DH // BQ
        NBP = -(-(-(-LM // LN_) * LN_) // B)
        VT = NBP * B // W
        bqb, wsh = BQ.bit_length() - 1, W.bit_length() - 1
        q_q.select(m, _rom(m, "bits_qk", [p.bits(l, "qk") for l in range(NL)], layer, 4))

        # Q (hbuf port 0) and K (hbuf port 1) rows: token t at hbuf[2 H t + (0 | H) + d]
        qk_done = []
        for n, (q, port) in enumerate(((q_q, 0), (q_k, 1))):
            addr = Signal(range(LM * 2 * H + 1), name=f"enc{n}_addr")
            en = Signal(name=f"enc{n}_en")
            dat = Signal(16, name=f"enc{n}_data")
            rp = _ReadPipe(m, f"enc{n}", addr, en, dat, tag_width=1)
            a = Signal(range(LM * 2 * H + 1), name=f"enc{n}_a")
            d = Signal(range(H), name=f"enc{n}_d")
            t = Signal(range(LM + 1), name=f"enc{n}_t")
            with m.If(on):
                m.d.comb += [hbuf.raddr[port].eq(addr), hbuf.ren[port].eq(en),
                             dat.eq(hbuf.rdata[port])]
            with m.If(go):
                m.d.sync += [a.eq(n * H), d.eq(0), t.eq(0)]
            m.d.comb += [rp.valid.eq(on & ~go & (t != L)), rp.addr.eq(a),
                         rp.tag.eq(d[:bqb] == BQ - 1)]
            with m.If(rp.valid & rp.ready):
                m.d.sync += [a.eq(a + 1), d.eq(d + 1)]
                with m.If(d == H - 1):
                    m.d.sync += [a.eq(a + H + 1), d.eq(0), t.eq(t + 1)]
            m.d.comb += [q.i_valid.eq(rp.out_valid & on), q.i_x.eq(rp.out_data),
                         q.i_last.eq(rp.out_tag), rp.out_ready.eq(q.i_ready),
                         q.o_ready.eq(1)]
        # EQ: one word per (token, head, block)
        qn = eq_layout["q"].shape.elem_shape.width
        iw = eq_layout["idx"].shape.elem_shape.width
        eq_sr_q = Signal(BQ * qn)
        eq_sr_o = Signal(max(K, 1) * (iw + 16))
        eq_n = Signal(range(LM * NH * NBK + 1))
        with m.If(go):
            m.d.sync += eq_n.eq(0)
        new_q = Cat(eq_sr_q[qn:], _sign_mag(q_q.o_q, qn))
        new_o = Cat(eq_sr_o[iw + 16:], q_q.o_index, q_q.o_value) if K else eq_sr_o
        with m.If(q_q.o_valid & on):
            m.d.sync += eq_sr_q.eq(new_q)
            with m.If(q_q.o_outlier):
                m.d.sync += eq_sr_o.eq(new_o)
            with m.If(q_q.o_last):
                m.d.sync += eq_n.eq(eq_n + 1)
                w = eq_layout(eqbuf.wdata)
                o_fin = Mux(q_q.o_outlier, new_o, eq_sr_o)
                m.d.comb += [w.q.as_value().eq(new_q), w.exp.eq(q_q.o_exp),
                             eqbuf.waddr.eq(eq_n), eqbuf.wen.eq(1)]
                for j in range(K):
                    m.d.comb += [w.idx[j].eq(o_fin[j * (iw + 16):j * (iw + 16) + iw]),
                                 w.val[j].eq(o_fin[j * (iw + 16) + iw:(j + 1) * (iw + 16)])]
        # KQ / KE: token t, channel d: word g * H/W + d/W, byte (t % lanes) * W + d % W
        k_t = Signal(range(LM + 1))
        k_d = Signal(range(H))
        k_base = Signal(range(LM * H + 1))        # g * H / W
        k_ebase = Signal(range(LM * H + 1))       # g * H / BQ
        lane = k_t[:LN_.bit_length() - 1] if LN_ > 1 else Const(0, 1)
        with m.If(go):
            m.d.sync += [k_t.eq(0), k_d.eq(0), k_base.eq(0), k_ebase.eq(0)]
        with m.If(q_k.o_valid & on):
            m.d.comb += [kq.waddr.eq(k_base + (k_d >> wsh)),
                         kq.wdata.eq(Cat(*[Cat(_sign_mag(q_k.o_q, KV), Const(0, 8 - KV))]
                                             * (LN_ * W))),
                         kq.wen.eq(Const(1, LN_ * W) << (lane * W + k_d[:wsh]
                                                         if W > 1 else lane))]
            with m.If(q_k.o_last):
                m.d.comb += [ke.waddr.eq(k_ebase + (k_d >> bqb)),
                             ke.wdata.eq(Cat(*[q_k.o_exp] * LN_)),
                             ke.wen.eq(Const(1, LN_) << lane)]
            m.d.sync += k_d.eq(Mux(k_d == H - 1, 0, k_d + 1))
            with m.If(k_d == H - 1):
                m.d.sync += k_t.eq(k_t + 1)
                with m.If(lane == LN_ - 1):
                    m.d.sync += [k_base.eq(k_base + H // W), k_ebase.eq(k_ebase + H // BQ)]

        # V columns (cbuf port 0): column d, tokens 0..L-1, a block ends at B or at L - 1
        f_addr = Signal(range(LM * H))
        f_en = Signal()
        f_data = Signal(16)
        rp = _ReadPipe(m, "vrd", f_addr, f_en, f_data, tag_width=2)
        with m.If(on):
            m.d.comb += [cbuf.raddr[0].eq(f_addr), cbuf.ren[0].eq(f_en),
                         f_data.eq(cbuf.rdata[0])]
        # a column is one block of L tokens, or whole blocks of B with zeros after token L - 1
        # (one block length throughout keeps mxq in its steady state)
        d = Signal(range(H + 1))
        t = Signal(range(NBP * B + 1))
        addr = Signal(range(LM * H + 1))
        lv = Signal(range(NBP * B + 1))
        m.d.comb += lv.eq(Mux(L > B, NBPr * B, L))
        with m.If(go):
            m.d.sync += [d.eq(0), t.eq(0), addr.eq(0)]
        m.d.comb += [rp.valid.eq(on & ~go & (d != H)), rp.addr.eq(addr),
                     rp.tag.eq(Cat((t[:B.bit_length() - 1] == B - 1) | (t == lv - 1), t >= L))]
        with m.If(rp.valid & rp.ready):
            with m.If(t == lv - 1):
                m.d.sync += [t.eq(0), d.eq(d + 1), addr.eq(d + 1)]
            with m.Else():
                m.d.sync += [t.eq(t + 1), addr.eq(addr + H)]
        m.d.comb += [q_v.i_valid.eq(rp.out_valid & on),
                     q_v.i_x.eq(Mux(rp.out_tag[1], 0, rp.out_data)),
                     q_v.i_last.eq(rp.out_tag[0]), rp.out_ready.eq(q_v.i_ready),
                     q_v.o_ready.eq(1)]
        # writer: column wd, block wb; token wb * B + index
        wd = Signal(range(H + 1))
        wb = Signal(range(NBP + 1))
        vlane = wd[:LN_.bit_length() - 1] if LN_ > 1 else Const(0, 1)
        vbase = Signal(range(H // LN_ * VT + 1))
        ebase = Signal(range(H // LN_ * NBP + 1))
        with m.If(go):
            m.d.sync += [wd.eq(0), wb.eq(0), vbase.eq(0), ebase.eq(0)]
        tok = Signal(range(NBP * B))
        m.d.comb += tok.eq(wb * B + q_v.o_index)
        with m.If(q_v.o_valid & on):
            m.d.comb += [vq.waddr.eq(vbase + (tok >> wsh)),
                         vq.wdata.eq(Cat(*[Cat(_sign_mag(q_v.o_q, KV), Const(0, 8 - KV))]
                                             * (LN_ * W))),
                         vq.wen.eq(Const(1, LN_ * W) << (
                             vlane * W + tok[:wsh] if W > 1 else vlane))]
            with m.If(q_v.o_last):
                m.d.comb += [ve.waddr.eq(ebase + wb), ve.wdata.eq(Cat(*[q_v.o_exp] * LN_)),
                             ve.wen.eq(Const(1, LN_) << vlane)]
                m.d.sync += wb.eq(wb + 1)
                with m.If(wb == NBPr - 1):
                    m.d.sync += [wb.eq(0), wd.eq(wd + 1)]
                    with m.If(vlane == LN_ - 1):
                        m.d.sync += [vbase.eq(vbase + VT), ebase.eq(ebase + NBP)]
        return on & ~go & (wd == H) & (k_t == L) & (eq_n == L * (NH * NBK))

    def _attention(self, m, p, arr, sm, q_p, eqbuf, eq_layout, kq, ke, vq, ve, cbuf, L, G,
                   LGr, NBPr, layer, on, go):
        """Attention, head by head, row by row: QK^T on the mixed array into the softmax,
        P encoded by mxq into a row buffer, PV on the mixed array into the context buffer.
        Returns the phase's ``done``."""
        H, NH, DH, LM, NL = p.hidden, p.heads, p.d_head, p.max_len, p.layers
        B, K, BQ, LN_, W = p.block, p.outliers, p.qk_block, p.lanes, p.width
        NBK, GPV = DH // BQ, DH // LN_
        LG = -(-LM // LN_) * LN_
        NBP = -(-LG // B)
        VT = NBP * B // W
        ap = p.mixed_array
        qn = eq_layout["q"].shape.elem_shape.width
        pn = ap.bits
        biw = _bits_for(B)
        wsh = W.bit_length() - 1
        bits_qk = _rom(m, "att_bits_qk", [p.bits(l, "qk") for l in range(NL)], layer)
        bits_pv = _rom(m, "att_bits_pv", [p.bits(l, "pv") for l in range(NL)], layer)
        q_p.select(m, bits_pv)
        nch_last = Signal(range(B // W + 1))
        m.d.comb += nch_last.eq((LGr - (NBPr - 1) * B + W - 1) >> wsh)

        # -- row loop ----------------------------------------------------------------------
        h = Signal(range(NH))
        i = Signal(range(LM))
        eq_row = Signal(range(LM * NH * NBK + 1))      # (i * NH + h) * NBK
        ctx_base = Signal(range(LM * H + 1))           # i * H + h * DH
        eqr = [Signal(eq_layout, name=f"eqr{b}") for b in range(NBK)]
        eq_n = Signal(range(NBK + 1))
        eq_got = Signal(range(NBK + 1))
        eq_rd = Signal()
        ep_done = Signal()
        c_n = Signal(range(DH + 1))                     # context outputs of the row
        bg_run = Signal()
        bg_done = Signal()                             # the last beat was issued
        qk = Signal()                                  # the beat generator's mode
        done = Signal()
        row_start = Signal()
        with m.FSM(name="att"):
            with m.State("IDLE"):
                with m.If(on & go):
                    m.d.sync += [h.eq(0), i.eq(0), eq_row.eq(0), ctx_base.eq(0)]
                    m.d.comb += row_start.eq(1)
                    m.next = "EQ"
            with m.State("EQ"):
                # the row's Q blocks into registers
                m.d.comb += [eqbuf.raddr[0].eq(eq_row + eq_n), eqbuf.ren[0].eq(eq_n != NBK)]
                with m.If(eq_n != NBK):
                    m.d.sync += eq_n.eq(eq_n + 1)
                with m.If(eq_got == NBK):
                    m.d.sync += [qk.eq(1), bg_run.eq(1)]
                    m.next = "QK"
            with m.State("QK"):
                with m.If(bg_done):
                    m.next = "WP"
            with m.State("WP"):
                with m.If(ep_done):
                    m.d.sync += [qk.eq(0), bg_run.eq(1)]
                    m.next = "PV"
            with m.State("PV"):
                with m.If(bg_done):
                    m.next = "WC"
            with m.State("WC"):
                with m.If(c_n == DH):
                    with m.If(i == L - 1):
                        m.d.sync += [i.eq(0), h.eq(h + 1),
                                     eq_row.eq((h + 1) * NBK), ctx_base.eq((h + 1) * DH)]
                        with m.If(h == NH - 1):
                            m.d.comb += done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.d.comb += row_start.eq(1)
                            m.next = "EQ"
                    with m.Else():
                        m.d.sync += [i.eq(i + 1), eq_row.eq(eq_row + NH * NBK),
                                     ctx_base.eq(ctx_base + H)]
                        m.d.comb += row_start.eq(1)
                        m.next = "EQ"
        m.d.sync += eq_rd.eq(eqbuf.ren[0] & on)
        with m.If(row_start):
            m.d.sync += [eq_n.eq(0), eq_got.eq(0), ep_done.eq(0), c_n.eq(0)]
        with m.If(eq_rd):
            m.d.sync += eq_got.eq(eq_got + 1)
            for b in range(NBK):
                with m.If(eq_got == b):
                    m.d.sync += eqr[b].eq(eqbuf.rdata[0])

        # -- P row buffer: mxq(P) output -> chunks of W inliers, per block exponent/outliers --
        ep_mem = memory.Memory(shape=unsigned(W * pn), depth=max(NBP * B // W, 2), init=[])
        m.submodules.ep_mem = ep_mem
        ep_w = ep_mem.write_port()
        ep_r = ep_mem.read_port()
        ep_exp = Array([Signal(8, name=f"ep_exp{b}") for b in range(NBP)])
        ep_idx = Array([Signal(biw, name=f"ep_idx{n}") for n in range(NBP * max(K, 1))])
        ep_val = Array([Signal(16, name=f"ep_val{n}") for n in range(NBP * max(K, 1))])
        ep_b = Signal(range(NBP + 1))
        ep_slot = Signal(range(K + 1))
        ep_chunk = Signal(data.ArrayLayout(unsigned(pn), W))     # sign-magnitude codes
        pe = Signal(range(NBP * B + 1))                # P elements into mxq
        with m.If(row_start):
            m.d.sync += [ep_b.eq(0), ep_slot.eq(0), pe.eq(0)]
        # a row of one block ends early; longer rows get zeros up to whole blocks of B (one
        # block length throughout keeps mxq in its steady state)
        pad = Signal(range(NBP * B + 1))
        padding = pad != 0
        m.d.comb += [q_p.i_valid.eq(padding | sm.o.valid),
                     q_p.i_x.eq(Mux(padding, 0, sm.o.payload.data)),
                     q_p.i_last.eq((pe[:biw] == B - 1) | (sm.o.payload.last & (NBPr == 1))),
                     sm.o.ready.eq(~padding & q_p.i_ready), q_p.o_ready.eq(1)]
        with m.If(q_p.i_valid & q_p.i_ready):
            m.d.sync += pe.eq(pe + 1)
            with m.If(padding):
                m.d.sync += pad.eq(pad - 1)
            with m.Elif(sm.o.payload.last & (NBPr != 1)):
                m.d.sync += pad.eq(NBPr * B - 1 - pe)
        with m.If(q_p.o_valid):
            jj = q_p.o_index[:wsh] if W > 1 else Const(0, 1)
            new = Signal(data.ArrayLayout(unsigned(pn), W))
            m.d.comb += new.eq(ep_chunk)
            with m.Switch(jj):
                for c in range(W):
                    with m.Case(c):
                        m.d.comb += new[c].eq(_sign_mag(q_p.o_q, pn))
            end = (jj == W - 1) | q_p.o_last
            m.d.sync += ep_chunk.eq(Mux(end, 0, new))
            m.d.comb += [ep_w.addr.eq(ep_b * (B // W) + (q_p.o_index >> wsh)),
                         ep_w.data.eq(new), ep_w.en.eq(end)]
            if K:
                with m.If(q_p.o_outlier):
                    m.d.sync += [ep_idx[ep_b * K + ep_slot].eq(q_p.o_index),
                                 ep_val[ep_b * K + ep_slot].eq(q_p.o_value),
                                 ep_slot.eq(ep_slot + 1)]
            with m.If(q_p.o_last):
                m.d.sync += [ep_exp[ep_b].eq(q_p.o_exp), ep_slot.eq(0), ep_b.eq(ep_b + 1)]
                with m.If(ep_b == NBPr - 1):
                    m.d.sync += ep_done.eq(1)

        # -- beat generator -----------------------------------------------------------------
        # One vector per lane group: QK^T, the row's Q blocks (BQ / W beats each) against
        # ``lanes`` keys; PV, the row's P blocks (a block ends after its last chunk with real
        # elements) against ``lanes`` context channels. The stationary integers come from
        # kq/vq, one word per beat (W integers of every lane); each block's outliers go on its
        # last beat with, per lane, the integers at their positions, which are taken from the
        # words as the block's beats pass (``ow_cap``).
        ilay = mixed_array_input_layout(ap)
        bfifo = fifo.SyncFIFOBuffered(width=ilay.size, depth=4)
        m.submodules.beat_fifo = bfifo
        NCQ, NCP = BQ // W, B // W                     # beats of a Q block, of a whole P block
        bg_g = Signal(range(max(LG // LN_, GPV) + 1))
        bg_b = Signal(range(max(NBP, NBK) + 1))
        bg_j = Signal(range(max(NCQ, NCP) + 1))
        inflight = Signal()
        issue = Signal()
        # a vector occupies at least ``lanes`` cycles (its result leaves the array one lane per
        # cycle): idle cycles follow a shorter vector, so the array never stalls
        bg_idle = Signal(range(LN_ + 1))
        vbeats = Signal(range(max(NBK * NCQ, NBP * NCP) + 1))
        m.d.comb += vbeats.eq(Mux(qk, NBK * NCQ, (NBPr - 1) * NCP + nch_last))
        slot = bg_run & on & (bfifo.level + inflight < 4)
        m.d.comb += issue.eq(slot & (bg_idle == 0))
        with m.If(slot & (bg_idle != 0)):
            m.d.sync += bg_idle.eq(bg_idle - 1)
        m.d.sync += inflight.eq(issue)
        with m.If(row_start):
            m.d.sync += [bg_g.eq(0), bg_b.eq(0), bg_j.eq(0)]
        m.d.sync += bg_done.eq(0)
        nch = Signal(range(max(NCQ, NCP) + 1))
        nblk = Signal(range(max(NBP, NBK) + 1))
        ngrp = Signal(range(max(LG // LN_, GPV) + 1))
        m.d.comb += [nch.eq(Mux(qk, NCQ, Mux(bg_b == NBPr - 1, nch_last, NCP))),
                     nblk.eq(Mux(qk, NBK, NBPr)), ngrp.eq(Mux(qk, G, GPV))]
        j_last = bg_j == nch - 1
        b_last = bg_b == nblk - 1
        with m.If(issue):
            m.d.sync += bg_j.eq(bg_j + 1)
            with m.If(j_last):
                m.d.sync += [bg_j.eq(0), bg_b.eq(bg_b + 1)]
                with m.If(b_last):
                    m.d.sync += [bg_b.eq(0), bg_g.eq(bg_g + 1),
                                 bg_idle.eq(Mux(vbeats < LN_, LN_ - vbeats, 0))]
                    with m.If(bg_g == ngrp - 1):
                        m.d.sync += [bg_g.eq(0), bg_run.eq(0), bg_done.eq(1), bg_idle.eq(0)]
        # stage A: addresses and the fields known now
        eq_cur = Signal(eq_layout)
        with m.Switch(bg_b):
            for b in range(NBK):
                with m.Case(b):
                    m.d.comb += eq_cur.eq(eqr[b])
        qk_chunk = Signal(W * qn)
        with m.Switch(bg_j):
            for j in range(NCQ):
                with m.Case(j):
                    m.d.comb += qk_chunk.eq(eq_cur.q.as_value()[j * W * qn:(j + 1) * W * qn])
        KS = max(K, 1)
        oidx = [Signal(biw, name=f"bt_oidx{j}") for j in range(KS)]   # position in the block
        oval = [Signal(16, name=f"bt_oval{j}") for j in range(KS)]
        for j in range(KS):
            if K:
                m.d.comb += [oidx[j].eq(Mux(qk, eq_cur.idx[j], ep_idx[bg_b * K + j])),
                             oval[j].eq(Mux(qk, eq_cur.val[j], ep_val[bg_b * K + j]))]
        grp_qk = Signal(range(LG // LN_ * (H // W) + 1))   # bg_g * H / W
        m.d.comb += grp_qk.eq(bg_g * (H // W))
        col = Signal(range(H // LN_ + 1))                 # h * GPV + g
        m.d.comb += col.eq(h * GPV + bg_g)
        with m.If(qk):
            m.d.comb += [
                kq.raddr[0].eq(grp_qk + h * (DH // W) + bg_b * NCQ + bg_j),
                ke.raddr[0].eq(bg_g * (H // BQ) + h * NBK + bg_b),
                kq.ren[0].eq(issue), ke.ren[0].eq(issue)]
        with m.Else():
            m.d.comb += [
                vq.raddr[0].eq(col * VT + bg_b * NCP + bg_j),
                ve.raddr[0].eq(col * NBP + bg_b),
                ep_r.addr.eq(bg_b * NCP + bg_j),
                vq.ren[0].eq(issue), ve.ren[0].eq(issue)]
        m.d.comb += ep_r.en.eq(issue)
        # stage B: registered fields, memory words -> the beat
        s_qk, s_blast, s_last = (Signal(name=f"bt_{n}") for n in ("qk", "blast", "last"))
        s_chunk = Signal(W * qn)
        s_exp = Signal(8)
        s_j = Signal(range(max(NCQ, NCP)))
        s_tokc = Signal(range(NBP * B + 1))            # PV: the beat's first token
        s_oidx = [Signal(biw, name=f"bt_soidx{j}") for j in range(KS)]
        s_oval = [Signal(16, name=f"bt_soval{j}") for j in range(KS)]
        with m.If(issue):
            m.d.sync += [
                s_qk.eq(qk), s_blast.eq(j_last), s_last.eq(j_last & b_last),
                s_chunk.eq(qk_chunk), s_j.eq(bg_j),
                s_exp.eq(Mux(qk, eq_cur.exp, ep_exp[bg_b])),
                s_tokc.eq(bg_b * B + (bg_j << wsh))]
            m.d.sync += [s_oidx[j].eq(oidx[j]) for j in range(KS)]
            m.d.sync += [s_oval[j].eq(oval[j]) for j in range(KS)]
        beat = ilay(bfifo.w_data)
        m.d.comb += [bfifo.w_en.eq(inflight), beat.exp.eq(s_exp),
                     beat.bits.eq(Mux(s_qk, bits_qk, bits_pv)),
                     beat.blast.eq(s_blast), beat.last.eq(s_last)]
        for j in range(K):
            m.d.comb += beat.o_val[j].eq(s_oval[j])
        pchunk = data.ArrayLayout(unsigned(pn), W)(ep_r.data)
        qchunk = data.ArrayLayout(unsigned(qn), W)(s_chunk)
        for c in range(W):
            m.d.comb += beat.q[c].eq(Mux(s_qk, qchunk[c], pchunk[c]))
        w0 = Mux(s_qk, kq.rdata[0], vq.rdata[0])
        we = Mux(s_qk, ke.rdata[0], ve.rdata[0])
        wb_, KV = ap.weight_bits, p.kv_bits
        s_blk = Signal(range(NBP * B + 1))             # PV: the block's first token
        m.d.comb += s_blk.eq(s_tokc - (s_j << wsh))
        for l in range(LN_):
            lb = beat.lane[l]
            ints = [w0[(l * W + c) * 8:(l * W + c) * 8 + wb_] for c in range(W)]
            for c in range(W):
                # V past token L - 1 (stale words of an earlier sentence) is taken as 0
                ok = s_qk | (s_tokc + c < L)
                m.d.comb += lb.w[c].eq(Mux(ok, ints[c], 0))
            for j in range(K):
                pick = Signal(wb_, name=f"bt_pick{l}_{j}")
                with m.Switch(s_oidx[j][:wsh] if W > 1 else Const(0, 1)):
                    for c in range(W):
                        with m.Case(c):
                            m.d.comb += pick.eq(ints[c])
                hit = (s_oidx[j] >> wsh) == s_j
                cap = Signal(wb_, name=f"ow_cap{l}_{j}")
                with m.If(inflight & hit):
                    m.d.sync += cap.eq(pick)
                ok = s_qk | (s_blk + s_oidx[j] < L)
                m.d.comb += lb.o_w[j].eq(Mux(ok, Mux(hit, pick, cap), 0))
            e = we[l * 8:(l + 1) * 8]
            m.d.comb += [lb.wexp.eq(e - (bf16.EXP_BIAS + KV - 2)), lb.wnan.eq(e == 0xFF)]
        m.d.comb += [arr.i.valid.eq(bfifo.r_rdy), bfifo.r_en.eq(arr.i.ready),
                     arr.i.payload.eq(bfifo.r_data)]

        # -- array results: a vector's result beat into a register as it comes (the array
        # never waits: vectors are at least ``lanes`` cycles apart), then one lane per cycle:
        # the S row into the softmax, or the context into cbuf
        o_n = Signal(range(max(LG, DH) + 1))
        o_l = Signal(range(LN_))
        hold = Signal(data.ArrayLayout(unsigned(16), LN_))
        held = Signal()
        res = Signal(16)
        with m.Switch(o_l):
            for l in range(LN_):
                with m.Case(l):
                    m.d.comb += res.eq(hold[l])
        take = Signal()
        with m.If(row_start):
            m.d.sync += o_n.eq(0)
        with m.If(take):
            m.d.sync += [o_n.eq(o_n + 1), o_l.eq(Mux(o_l == LN_ - 1, 0, o_l + 1))]
            with m.If(o_l == LN_ - 1):
                m.d.sync += held.eq(0)
        m.d.comb += arr.o.ready.eq(~held | (take & (o_l == LN_ - 1)))
        with m.If(arr.o.valid & arr.o.ready):
            m.d.sync += [hold.eq(arr.o.payload.value), held.eq(1)]
        with m.If(qk):
            m.d.comb += [sm.i.valid.eq(held), sm.i.payload.data.eq(res),
                         sm.i.payload.mask.eq(o_n < L), sm.i.payload.last.eq(o_n == LGr - 1),
                         take.eq(held & sm.i.ready)]
        with m.Else():
            m.d.comb += take.eq(held)
            with m.If(held):
                m.d.comb += [cbuf.waddr.eq(ctx_base + c_n), cbuf.wdata.eq(res),
                             cbuf.wen.eq(1)]
                m.d.sync += c_n.eq(c_n + 1)
        return done


    @staticmethod
    def _busy(m, name, iv, ir, ov, orr, busy, elems):
        flight = Signal(16, name=f"{name}_flight")
        fi, fo = iv & ir, ov & orr
        m.d.sync += flight.eq(flight + fi - fo)
        _counter(m, busy, (flight != 0) | iv)
        _counter(m, elems, fi)


def _rom(m, name, values, index, width=None):
    """A signal equal to ``values[index]`` (``index`` a runtime value)."""
    sig = Signal(width or range(max(values) + 1), name=name)
    with m.Switch(index):
        for i, v in enumerate(values):
            with m.Case(i):
                m.d.comb += sig.eq(v)
    return sig


class _RangeReader:
    """Stream the words ``base .. base + count - 1`` of a memory (``_ReadPipe`` on read port
    ``port``), from the cycle after ``start``."""

    def __init__(self, m, name, mem, port, start, base, count):
        self.pipe = rp = _ReadPipe(m, name, mem.raddr[port], mem.ren[port], mem.rdata[port])
        addr = Signal(range(mem.depth + 1), name=f"{name}_addr")
        left = Signal(range(mem.depth + 1), name=f"{name}_left")
        with m.If(start):
            m.d.sync += [addr.eq(base), left.eq(count)]
        m.d.comb += [rp.valid.eq(~start & (left != 0)), rp.addr.eq(addr)]
        with m.If(rp.valid & rp.ready):
            m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
        self.valid, self.ready, self.data = rp.out_valid, rp.out_ready, rp.out_data


UNIT = Unit(name="encoder", params=EncoderParams, presets=PRESETS, component=Encoder,
            golden=encoder,
            summary="the accelerator: BERT encoder layers end to end, all weights on chip")
