"""The rhythm of an ``analyses.rhythm`` file, from its stored per-head arrays
only (no model): head groups, preplan and anchor tokens, their coupling
against a random baseline, FAI against the reasoner's dependency graph, and
per-frame FAI against the frames the renderer made informative.

    from analyses.rhythm_summary import summarize, table
    res = summarize("cache/rhythm-reasoner-reasoning.h5", {"local": 0.2})
    print(table(res))
"""
from __future__ import annotations

import numpy as np

from analyses import rhythm_metrics as rm
from analyses.run import UsageError

THRESHOLDS = {"local": 0.3, "global_": 0.3, "preplan": 0.4, "anchor": 0.4, "layers": "all", "horizon": None,
              "k": [1, 2, 3], "tau_waad": None, "tau_delta": None, "draws": 1000, "seed": 0}
GAP = 4  # positions between pooled traces: no coupling window (k <= 3) reaches across


def _units(path):
    from tracing.store import CacheReader

    r = CacheReader(path)
    return r, list(r.units())


def summarize(path, request: dict | None = None) -> dict:
    """The rhythm of a complete ``analyses.rhythm`` file, from its stored arrays
    only (no model). ``request``: THRESHOLDS overrides. -> dict with 'd' [L, H]
    head spans, 'local' / 'global' masks, 'layers', per unit 'waad_t', 'fai_t',
    'delta', 'preplan', 'anchor', 'rows', 'tokens'; pooled 'coupling' (by k),
    'peak_follow' (by k), 'entropy_at_peaks'; text: 'auroc' per layer
    (global heads vs random heads of that layer) and 'boundary'; video:
    'frame_fai' [L, F] and 'frame_mass' {group: [L, F, F]}."""
    q = {**THRESHOLDS, **(request or {})}
    r, units = _units(path)
    if not units:
        raise ValueError(f"{path}: no complete unit to summarise")
    cfg = r.config
    horizon = q["horizon"] or cfg["horizons"][0]
    if horizon not in cfg["horizons"]:
        raise UsageError(f"--horizon {horizon!r}: this file holds {', '.join(cfg['horizons'])}")
    L, H = units[0][1]["waad"].shape[:2]
    layers = rm.select_layers(L, q["layers"])
    d = np.mean([rm.head_span(a["span_term"], a["rows"].astype(bool)) for _, a, _, _ in units], 0)  # [L, H]
    sub = np.zeros((L, H), bool)
    sub[layers] = True
    loc, glob = rm.head_groups(d[layers], q["local"], q["global_"])
    local = np.zeros((L, H), bool)
    glob_ = np.zeros((L, H), bool)
    local[layers], glob_[layers] = loc, glob
    out = {"d": d, "local": local, "global": glob_, "layers": layers, "horizon": horizon, "request": q,
           "units": [], "ids": r.samples["id"][[i for i, *_ in units]].tolist()}
    pooled = {k: [] for k in ("waad_t", "delta", "fai_t", "rows", "entropy", "sources", "cands", "bounds")}
    text = "sources" in units[0][1]
    rng = np.random.default_rng(q["seed"])
    auroc_obs, auroc_rand = {l: [] for l in range(L)}, {l: [] for l in range(L)}
    for i, a, lay, meta in units:
        rows = a["rows"].astype(bool)
        fai = a[f"fai_{horizon}"]
        waad_t = rm.group_mean(a["waad"], local)
        fai_t = rm.group_mean(fai, glob_)
        delta = rm.waad_delta(waad_t, rows)
        preplan = rm.top_fraction(delta, q["preplan"], within=rows)
        anchor = rm.top_fraction(fai_t, q["anchor"], within=rows)
        out["units"].append({"i": i, "tokens": a["tokens"], "rows": rows, "waad_t": waad_t, "fai_t": fai_t,
                             "delta": delta, "preplan": preplan, "anchor": anchor, "meta": meta})
        T, gap = len(rows), np.zeros(GAP, bool)
        pooled["waad_t"] += [waad_t, np.full(GAP, np.nan)]
        pooled["delta"] += [delta, np.full(GAP, np.nan)]
        pooled["fai_t"] += [fai_t, np.full(GAP, np.nan)]
        pooled["rows"] += [rows, gap]
        pooled["entropy"] += [a["next_entropy"], np.full(GAP, np.nan)]
        if text:
            cands = (np.arange(T) >= 1) & ~np.isnan(fai[0, 0])  # every token but <s> that later rows can read
            has = bool(meta.get("has_deps"))
            pooled["sources"] += [a["sources"].astype(bool) & has, gap]
            pooled["cands"] += [cands & has, gap]
            pooled["bounds"] += [a["boundaries"].astype(bool), gap]
            if has:
                for l in range(L):  # FAI of layer l's global heads against as many random heads of it
                    g = glob_[l]
                    if g.any():
                        auroc_obs[l].append((fai[l][g].mean(0), a["sources"].astype(bool), cands))
                        pick = rng.choice(H, g.sum(), replace=False)
                        auroc_rand[l].append((fai[l][pick].mean(0), a["sources"].astype(bool), cands))
    P = {k: np.concatenate(v) if v else None for k, v in pooled.items()}
    if "perturb" in units[0][1]:
        from analyses.rhythm_perturb import summary

        out["perturbation"] = summary(np.concatenate([a["perturb"] for _, a, _, _ in units]))
    c = rm.coupling(P["waad_t"], P["delta"], P["fai_t"], P["rows"], k=tuple(q["k"]), tau_waad=q["tau_waad"],
                    tau_delta=q["tau_delta"], frac=q["anchor"], n_draws=q["draws"], seed=q["seed"])
    out["coupling"] = c
    out["peak_follow"] = rm.peak_follow_rate(P["delta"], P["fai_t"], P["rows"], k=tuple(q["k"]), frac=q["anchor"],
                                             n_draws=q["draws"], seed=q["seed"])
    pre = rm.top_fraction(P["delta"], q["preplan"], within=P["rows"])
    out["entropy_at_peaks"] = rm.entropy_at_peaks(P["entropy"], pre, P["rows"])
    if text:
        def pooled_auroc(parts):
            if not parts:
                return float("nan")
            f, s, cnd = (np.concatenate(x) for x in zip(*parts))
            return rm.dependency_auroc(f, s, cnd)

        out["auroc"] = {l: (pooled_auroc(auroc_obs[l]), pooled_auroc(auroc_rand[l])) for l in range(L)}
        out["auroc_all"] = rm.dependency_auroc(P["fai_t"], P["sources"], P["cands"])
        out["boundary"] = rm.boundary_rate(pre, P["bounds"], P["rows"])
    elif "frame_mass" in units[0][1]:
        frames = [m["frames"] for _, _, _, m in units]
        ff = []
        for (_, a, _, m), fr in zip(units, frames):
            f = np.nan_to_num(a[f"fai_{horizon}"]).mean(1)  # [L, T]: all heads of a layer
            ff.append(np.stack([f[:, s:e].sum(-1) for s, e in fr], -1))  # [L, F]
        out["frame_fai"] = np.mean(ff, 0)
        def video_waad(mask):  # per layer: the group's WAAD averaged over the video tokens
            per = [[a["waad"][l][mask[l]][:, slice(*m["spans"]["video"])].mean() if mask[l].any() else np.nan
                    for l in range(L)] for _, a, _, m in units]
            return np.mean(per, 0)

        out["video_waad"] = {"local heads": video_waad(local), "global heads": video_waad(glob_)}
        tasks = r.samples["task"][[i for i, *_ in units]]
        out["informative"] = informative_frames_check([f.mean(0) for f in ff], tasks,
                                                      [m.get("informative") for _, _, _, m in units])
        masses = np.mean([a["frame_mass"] for _, a, _, _ in units], 0)  # [L, H, F, F]
        out["frame_mass"] = {"local heads": np.stack([masses[l][local[l]].mean(0) if local[l].any() else
                                                      np.full(masses.shape[2:], np.nan) for l in range(L)]),
                             "global heads": np.stack([masses[l][glob_[l]].mean(0) if glob_[l].any() else
                                                       np.full(masses.shape[2:], np.nan) for l in range(L)]),
                             "all heads": masses.mean(1)}
    return out


def informative_frames_check(per_frame: list[np.ndarray], tasks, informative: list, control: str = "static_color"):
    """Does per-frame FAI (all heads, averaged over layers) peak at the frames
    that decide the answer? Per task with known informative frames: the share
    of the FAI summed over those frames, the share they would get if FAI were
    uniform over frames, and the share the same frame sets get in the
    ``control`` task's clips (where they decide nothing); and how often the
    frame of largest FAI is informative, against the control.
    -> {task: {"n", "share", "uniform", "control_share", "peak", "control_peak"}}."""
    ctrl = [f for f, t in zip(per_frame, tasks) if t == control]
    out = {}
    for task in dict.fromkeys(tasks):
        rows = [(f, inf) for f, t, inf in zip(per_frame, tasks, informative) if t == task and inf]
        if not rows:
            continue
        share = [f[inf].sum() / f.sum() for f, inf in rows]
        peak = [int(np.argmax(f)) in inf for f, inf in rows]
        res = {"n": len(rows), "share": float(np.mean(share)), "uniform": float(np.mean([len(inf) / len(f)
                                                                                        for f, inf in rows])),
               "peak": float(np.mean(peak)), "control_share": float("nan"), "control_peak": float("nan")}
        if ctrl:
            res["control_share"] = float(np.mean([c[inf].sum() / c.sum() for _, inf in rows for c in ctrl]))
            res["control_peak"] = float(np.mean([int(np.argmax(c)) in inf for _, inf in rows for c in ctrl]))
        out[task] = res
    return out


def table(res: dict) -> str:
    """The pooled statistics as text, next to the paper's numbers."""
    lines = [f"heads: {int(res['local'].sum())} local, {int(res['global'].sum())} global "
             f"(layers {', '.join(map(str, res['layers']))}); FAI horizon {res['horizon']}; "
             f"{len(res['units'])} traces"]
    for k, rate in res["coupling"].by_k.items():
        lines.append(f"anchor locally dominated (k={k}): {100 * rate.observed:.1f}% vs random "
                     f"{100 * rate.baseline:.1f}%  (p = {rate.p_value:.3f})")
    for k, rate in res["peak_follow"].items():
        lines.append(f"FAI peak at or right after a WAAD peak (k={k}): {100 * rate.observed:.1f}% vs random "
                     f"{100 * rate.baseline:.1f}%   [paper, Qwen3-4B-Base on GSM8K: 52.53% vs 36.87%]")
    e = res["entropy_at_peaks"]
    lines.append(f"next-token entropy at preplan tokens: {e.observed:.4f} vs elsewhere {e.baseline:.4f}   "
                 f"[paper: 0.3608 vs 0.2386]")
    if "auroc" in res:
        if not np.isnan(res["auroc_all"]):  # traces with a known dependency graph only
            lines.append(f"FAI (global heads) ranking the tokens later steps read: AUROC {res['auroc_all']:.3f}")
        for l, (o, rnd) in res["auroc"].items():
            if not np.isnan(o):
                lines.append(f"  layer {l}: global heads {o:.3f}, random heads {rnd:.3f}")
        b = res["boundary"]
        lines.append(f"preplan tokens on a step's first token: {100 * b.observed:.1f}% vs all response tokens "
                     f"{100 * b.baseline:.1f}%")
    if "perturbation" in res:
        p = res["perturbation"]
        lines.append(f"perturbation: the high-FAI change alters the rollout more in {100 * p['high_more']:.1f}% of "
                     f"{p['n']} trials (as much: {100 * p['tie']:.1f}%, less: {100 * p['low_more']:.1f}%, sign test "
                     f"p = {p['p_value']:.3f}; mean change {p['high_change']:.3f} vs {p['low_change']:.3f})   "
                     f"[paper: 87.14%]")
    for task, v in res.get("informative", {}).items():
        lines.append(f"{task}: FAI share of its informative frames {100 * v['share']:.1f}% (uniform "
                     f"{100 * v['uniform']:.1f}%, same frames in static clips {100 * v['control_share']:.1f}%); "
                     f"largest-FAI frame informative in {100 * v['peak']:.0f}% of {v['n']} clips "
                     f"(static clips {100 * v['control_peak']:.0f}%)")
    return "\n".join(lines)


def stage_results(res: dict) -> dict:
    """What the later stage stores: the head spans and groups, the pooled rates."""
    out = {"head_span": (res["d"], {"layers": list(map(int, res["layers"]))}),
           "local_heads": (res["local"].astype(np.int8), {}), "global_heads": (res["global"].astype(np.int8), {})}
    ks = sorted(res["coupling"].by_k)
    out["coupling"] = (np.array([[res["coupling"].by_k[k].observed, res["coupling"].by_k[k].baseline] for k in ks]),
                       {"k": ks, "columns": ["observed", "random baseline"]})
    out["peak_follow"] = (np.array([[res["peak_follow"][k].observed, res["peak_follow"][k].baseline] for k in ks]),
                          {"k": ks, "columns": ["observed", "random baseline"]})
    e = res["entropy_at_peaks"]
    out["entropy_at_peaks"] = (np.array([e.observed, e.baseline]), {"columns": ["preplan tokens", "elsewhere"]})
    if "auroc" in res:
        out["auroc"] = (np.array([res["auroc"][l] for l in sorted(res["auroc"])]),
                        {"columns": ["global heads", "random heads"], "pooled": res["auroc_all"]})
    if "perturbation" in res:
        p = res["perturbation"]
        cols = ["high_more", "tie", "low_more", "high_change", "low_change"]
        out["perturbation"] = (np.array([p[c] for c in cols]), {"columns": cols, "n": p["n"],
                                                                 "sign_test_p": p["p_value"]})
    if "frame_fai" in res:
        out["frame_fai"] = (res["frame_fai"], {"axes": ["layer", "frame"]})
        out["video_waad"] = (np.stack(list(res["video_waad"].values())), {"rows": list(res["video_waad"])})
        for task, v in res["informative"].items():
            cols = ["share", "uniform", "control_share", "peak", "control_peak"]
            out[f"informative/{task}"] = (np.array([v[c] for c in cols]), {"columns": cols, "n": v["n"]})
    return out


