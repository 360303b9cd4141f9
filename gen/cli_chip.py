"""``xbarllm report``: latency, energy and area of the chip against the GPU and a traditional
crossbar design, and the memory-wall figures (``sim.chip``).

``gen.cli`` calls ``add_commands(subparsers)`` once; everything else is here.
"""

import json
import os
import sys

__all__ = ["add_commands", "print_report", "write_plots", "stale_areas", "source_hash"]


def _si(v, unit):
    for scale, prefix in ((1e-12, "p"), (1e-9, "n"), (1e-6, "u"), (1e-3, "m"), (1, "")):
        if abs(v) < scale * 1000:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def print_report(r, file=None):
    """The table of one report dict (``sim.chip.report``) on ``file`` (default: stdout)."""
    def p(*a):
        print(*a, file=file or sys.stdout)
    cfg = r["config"]
    t = cfg["tile"]
    p(f"xbarllm chip model: {r['model']}, sequence {r['seq']}, node {cfg['node_nm']:.0f} nm, "
      f"digital clock {cfg['clock_hz'] / 1e9:.3g} GHz")
    p(f"  tiles {r['area']['tiles']} x {t['rows']}x{t['cols']} cells ({t['cell_bits']} bits), "
      f"{r['area']['adcs']} ADCs of {cfg['adc_bits']} bits ({_si(cfg['adc_j'], 'J')}/conv; "
      f"outlier row reads {_si(cfg['outlier_adc_j'], 'J')}/conv, --outlier-adc "
      f"{cfg['outlier_adc']}), "
      f"macro: read {cfg['timing']['t_read']} + {cfg['timing']['cols_per_adc']} x "
      f"{cfg['timing']['t_adc']} cycles per pulse")
    p(f"  {cfg['arrays']} mixed arrays ({cfg['array']['lanes']} lanes x "
      f"{cfg['array']['width']}), {cfg['softmax_units']} softmax units, "
      f"{cfg['lanes']} x layernorm/GELU/mxq")
    p("")
    g1, g32, tr = r["gpu"]["batch1"], r["gpu"]["batch32"], r["traditional"]
    rows = [("this chip", r["energy_j"], r["latency_s"], r["area_mm2"]),
            ("traditional crossbar", tr["energy"]["total"], tr["latency"]["total"],
             tr["area"]["total"]),
            ("H100 batch 1", g1["energy_j"], g1["latency_s"], g1["area_mm2"]),
            ("H100 batch 32", g32["energy_j"], g32["latency_s"], g32["area_mm2"])]
    p(f"  {'design':<22}{'energy/seq':>13}{'latency':>13}{'area':>12}{'area x delay':>16}")
    for name, e, lat, a in rows:
        p(f"  {name:<22}{_si(e, 'J'):>13}{_si(lat, 's'):>13}{a:>9.1f} mm2"
          f"{a * lat * 1e3:>12.3g} mm2.ms")
    p("")
    p(f"  energy per inference: {_si(r['energy_j'], 'J')}; latency {_si(r['latency_s'], 's')}; "
      f"area {r['area_mm2']:.1f} mm2")
    p(f"  vs H100 (baseline / chip): energy {r['vs_gpu_batch1_energy']:.3g}x at batch 1 (goal "
      f">= 100x), {r['vs_gpu_batch32_energy']:.3g}x at batch 32 (goal >= 10x); area x delay "
      f"{r['vs_gpu_area_delay']:.3g}x, latency {r['vs_gpu_latency']:.3g}x (batch {r['batch']})")
    for mode, o in r["outlier_adc"].items():
        if mode != cfg["outlier_adc"]:
            p(f"  with --outlier-adc {mode} ({_OUTLIER_ADC[mode]}): energy "
              f"{_si(o['energy_j'], 'J')}, vs H100 {o['vs_gpu_batch1_energy']:.3g}x at batch 1, "
              f"{o['vs_gpu_batch32_energy']:.3g}x at batch 32; ADCs {100 * o['adc_share']:.0f}%"
              " of the energy")
    p(f"  vs traditional crossbar (baseline / chip): energy {r['vs_traditional_energy']:.3g}x, "
      f"area {r['vs_traditional_area']:.3g}x, latency {r['vs_traditional_latency']:.3g}x, "
      f"area x delay {r['vs_traditional_area_delay']:.3g}x")
    p("")
    _breakdown(p, "energy", r["energy"]["parts"], r["energy"]["total"])
    _breakdown(p, "area", r["area"]["parts"], r["area"]["total"])
    per = r["latency"]["per_phase"]
    p("  latency per phase (all layers; phases in a group overlap): "
      + ", ".join(f"{k} {_si(v, 's')}" for k, v in per.items()))
    o = r["opal"]
    p(f"  OPAL comparison (per MAC): mixed array {_si(o['mixed_j_per_mac'], 'J')}, bf16 array "
      f"{_si(o['bf16_j_per_mac'], 'J')} ({o['energy_ratio']:.1f}x); area "
      f"{o['mixed_area_mm2']:.4f} vs {o['bf16_area_mm2']:.4f} mm2 ({o['area_ratio']:.2f}x)")
    m = r["memory_wall"]
    mib = 2 ** 20
    p(f"  memory wall: weights {m['weight_bytes_chip'] / mib:.1f} MiB resident "
      f"({m['weight_bytes_fp16'] / mib:.1f} MiB fp16 on the GPU), activations "
      f"{m['activation_bytes'] / mib:.2f} MiB; HBM bytes/seq {m['gpu_b1']['hbm_bytes'] / mib:.1f} "
      f"MiB (b1), {m['gpu_b32']['hbm_bytes'] / mib:.1f} MiB (b32); chip off-chip "
      f"{m['chip']['offchip_bytes'] / 2**10:.0f} KiB, on-chip SRAM "
      f"{m['chip']['sram_bytes'] / mib:.1f} MiB")
    p(f"  arithmetic intensity (FLOP/byte): GPU b1 {m['gpu_b1']['intensity']:.0f}, b32 "
      f"{m['gpu_b32']['intensity']:.0f}; chip off-chip {m['chip']['intensity']:.0f}, "
      f"on-chip SRAM {m['chip']['intensity_sram']:.0f}")


_OUTLIER_ADC = {"full": "outlier row reads at the ADC's full width",
                "cell": "outlier row reads in cell_bits SAR cycles"}


def _breakdown(p, what, parts, total):
    items = sorted(parts.items(), key=lambda kv: -kv[1])
    p(f"  {what} by component: " + ", ".join(
        f"{k} {100 * v / total:.1f}%" for k, v in items if v > 0.0005 * total))


def write_plots(r, out_dir):
    """PNG plots of one report: breakdowns, the comparison table, OPAL's, the roofline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    tag = f"{r['model']}-seq{r['seq']}"
    paths = []

    def save(fig, name):
        path = os.path.join(out_dir, f"{tag}-{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    # breakdowns: this chip and the traditional design, stacked
    for what, unit, scale in (("energy", "uJ", 1e6), ("area", "mm$^2$", 1)):
        fig, ax = plt.subplots(figsize=(7.5, 4))
        designs = (("this chip", r[what]["parts"]),
                   ("traditional", r["traditional"][what]["parts"]))
        keys = sorted({k for _, d in designs for k in d},
                      key=lambda k: -max(d.get(k, 0) for _, d in designs))
        cmap = plt.get_cmap("tab20")
        for j, (name, d) in enumerate(designs):
            left = 0.0
            for i, k in enumerate(keys):
                v = d.get(k, 0.0) * scale
                ax.barh(j, v, left=left, color=cmap(i % 20), label=k if j == 0 else None)
                left += v
        ax.set_yticks(range(len(designs)), [n for n, _ in designs])
        ax.set_xlabel(f"{what} per inference ({unit})" if what == "energy" else f"area ({unit})")
        ax.set_title(f"{r['model']}, seq {r['seq']}: {what} by component")
        ax.legend(fontsize=7, ncol=2, loc="lower right")
        save(fig, what)

    # the crossbar paper's table: energy, latency, area x delay against both baselines
    g1, g32, tr = r["gpu"]["batch1"], r["gpu"]["batch32"], r["traditional"]
    names = ["this chip", "traditional\ncrossbar", "H100 b1", "H100 b32"]
    vals = {
        "energy per sequence (J)": [r["energy_j"], tr["energy"]["total"], g1["energy_j"],
                                    g32["energy_j"]],
        "latency (s)": [r["latency_s"], tr["latency"]["total"], g1["latency_s"],
                        g32["latency_s"]],
        "area x delay (mm$^2$ s)": [r["area_mm2"] * r["latency_s"],
                                    tr["area"]["total"] * tr["latency"]["total"],
                                    g1["area_mm2"] * g1["latency_s"],
                                    g32["area_mm2"] * g32["latency_s"] / 32],
    }
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, (label, v) in zip(axes, vals.items()):
        ax.bar(names, v, color=["tab:green", "tab:orange", "tab:gray", "tab:blue"])
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{r['model']}, seq {r['seq']} (H100 b32: per sequence)", fontsize=10)
    save(fig, "compare")

    # OPAL's comparison
    o = r["opal"]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    axes[0].bar(["mixed", "bf16"], [o["mixed_j_per_mac"] * 1e12, o["bf16_j_per_mac"] * 1e12],
                color=["tab:green", "tab:gray"])
    axes[0].set_title("energy per MAC (pJ)", fontsize=9)
    axes[1].bar(["mixed", "bf16"], [o["mixed_area_mm2"], o["bf16_area_mm2"]],
                color=["tab:green", "tab:gray"])
    axes[1].set_title("array area (mm$^2$)", fontsize=9)
    fig.suptitle("mixed INT/FP array vs bf16 array (same lanes x width)", fontsize=10)
    save(fig, "opal")

    paths.append(roofline([r], out_dir, f"{tag}-roofline.png"))
    return paths


def roofline(reports, out_dir, name):
    """The H100 roofline with the GPU (batch 1, 32) and each chip's point; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m0 = reports[0]["memory_wall"]
    peak, bw = m0["h100_peak_flops"], m0["h100_hbm_bytes_s"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = np.logspace(-1, 6, 200)
    ax.plot(x, np.minimum(peak, bw * x), "k-", lw=1.2,
            label=f"H100 roof: {peak / 1e12:.0f} TFLOP/s fp16, {bw / 1e12:.2f} TB/s HBM")
    marks = {"minilm": "o", "bert-base": "s", "bert-large": "^"}
    for r in reports:
        m, mk = r["memory_wall"], marks.get(r["model"], "o")
        for b, col in (("b1", "tab:gray"), ("b32", "tab:blue")):
            g = m[f"gpu_{b}"]
            ax.plot(g["intensity"], g["flops_s"], mk, color=col,
                    label=f"H100 {r['model']} batch {b[1:]}")
        ch = m["chip"]
        ax.plot(ch["intensity"], ch["flops_s"], mk, color="tab:green",
                label=f"chip {r['model']} (off-chip bytes)")
        ax.plot(ch["intensity_sram"], ch["flops_s"], mk, mfc="none", color="tab:green",
                label=f"chip {r['model']} (on-chip SRAM bytes)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte moved)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"roofline, seq {reports[0]['seq']}")
    ax.legend(fontsize=6, loc="upper left")
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def source_hash(unit):
    """sha256 of ``hw/<unit>.py``, recorded with each synthesized area."""
    import hashlib
    from .harness import ROOT
    return hashlib.sha256((ROOT / "hw" / f"{unit}.py").read_bytes()).hexdigest()


def stale_areas(entries):
    """Cached synthesis records whose parameters or ``hw/<unit>.py`` differ from today's."""
    from sim.params import params_to_dict
    from .build import UsageError, resolve
    out = []
    for key, rec in sorted(entries.items()):
        unit, preset = key.split("/")
        try:
            _, params = resolve(unit, preset)
        except UsageError:
            out.append(key)
            continue
        if params_to_dict(params) != rec.get("params") or source_hash(unit) != rec.get(
                "source_sha256"):
            out.append(key)
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.6g}")
    return x


def _overrides(items):
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes NAME=VALUE, not {item!r}")
        try:
            out[key] = float(text)
        except ValueError:
            raise ValueError(f"--set {key} must be a number, not {text!r}") from None
    return out


def _cmd_report(args):
    from sim import chip
    if args.model not in chip.GPU_KEYS:
        raise ValueError(f"model must be one of {', '.join(chip.GPU_KEYS)}, not "
                         f"{args.model!r}")
    seq, batch = _int("seq", args.seq), _int("batch", args.batch)
    if batch not in (1, 32):
        raise ValueError(f"batch must be 1 or 32 (the measured GPU batches), not {batch}")
    c = chip.load_constants(overrides=_overrides(args.set))
    if args.outlier_adc not in chip.OUTLIER_ADC:
        raise ValueError(f"--outlier-adc must be one of {', '.join(chip.OUTLIER_ADC)}, not "
                         f"{args.outlier_adc!r}")
    cfg = chip.chip_config(args.model, c, outlier_adc=args.outlier_adc)
    cfg.check_seq(seq)
    entries = chip.load_area()
    for key in stale_areas(entries):
        print(f"xbarllm: warning: the cached area of {key} was synthesized from other "
              "parameters or source than the unit has now; rerun scripts/synth_area.py",
              file=sys.stderr)
    r = chip.report(args.model, seq, batch, cfg=cfg, constants=c, entries=entries)
    print_report(r)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(_jsonable(r), f, indent=1)
            f.write("\n")
        print(f"\nwrote {args.json}")
    if not args.no_plots:
        out = args.plots or os.path.join("build", "report")
        paths = write_plots(r, out)
        print(f"wrote {len(paths)} plots to {out}/")
    return 0


def _int(name, text):
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {text!r}") from None


def add_commands(subparsers):
    """Add ``report`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "report", help="chip latency, energy and area vs the H100 and a traditional crossbar",
        description="Latency, energy and area per inference of the accelerator for a model "
                    "and sequence length (sim.chip), against the measured H100 and a "
                    "traditional crossbar design, with the memory-wall figures. Constants: "
                    "sim/data/chip.toml (docs/chip.md).")
    p.add_argument("--model", default="minilm",
                   help="encoder: minilm, bert-base or bert-large (default: minilm)")
    p.add_argument("--seq", default="128",
                   help="sequence length, 1..the preset's maximum (default: 128)")
    p.add_argument("--batch", default="1",
                   help="GPU batch of the headline ratio, 1 or 32 (default: 1; both are "
                        "reported)")
    p.add_argument("--outlier-adc", default="full", metavar="full|cell",
                   help="macro-contract option: convert one-hot outlier row reads at the "
                        "ADC's full width (full, the RTL's contract; default) or in cell_bits "
                        "SAR cycles (cell); the other is always reported too (docs/chip.md)")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--plots", metavar="DIR",
                   help="folder of the PNG plots (default: build/report)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="override a constant of sim/data/chip.toml; repeatable")
    p.set_defaults(func=_cmd_report)
