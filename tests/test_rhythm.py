"""analyses/rhythm.py end to end: the reasoner's and the organism's traces,
the stored per-head arrays against eager attention maps of the same tokens,
the rhythm stage recomputed from the stored arrays, and its request."""
import json

import numpy as np
import pytest
import torch

from analyses import rhythm
from analyses import rhythm_summary
from analyses import rhythm_metrics as rm
from analyses.run import cli_boundary
from tracing.store import CacheReader
from tracing.registry import load_model

torch.set_num_threads(1)


def eager_maps(lm, ids, extra=None):
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       output_attentions=True, **(extra or {}))
    return np.stack([a[0].double().numpy() for a in out.attentions])


REASONER_ARGS = ["--model", "reasoner", "--tasks", "clock,relations", "--limit", "1", "--no-progress", "--draws", "50",
                 "--horizons", "end,v1"]
ORGANISM_ARGS = ["--model", "organism", "--tasks", "direction,static_color", "--limit", "1", "--no-progress",
                 "--draws", "20"]


@pytest.fixture(scope="module")
def reasoner_file(tmp_path_factory):
    """One reasoner run for the tests below (each a few seconds of generation)."""
    out = tmp_path_factory.mktemp("rhythm") / "r.h5"
    assert cli_boundary(rhythm.main)([*REASONER_ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def organism_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("rhythm")
    assert cli_boundary(rhythm.main)([*ORGANISM_ARGS, "--out", str(d / "o.h5"), "--figures", str(d / "fig")]) == 0
    return d / "o.h5"


def test_reasoner_end_to_end(reasoner_file, tmp_path, capsys):
    import shutil

    out = tmp_path / "r.h5"
    shutil.copyfile(reasoner_file, out)
    args = [*REASONER_ARGS, "--out", str(out)]
    text = rhythm_summary.table(rhythm_summary.summarize(out))
    assert "FAI peak at or right after a WAAD peak (k=1)" in text and "AUROC" in text
    r = CacheReader(out)
    assert r.config["horizons"] == ["end", "v1"] and r.config["response"] == "generated"
    lm = load_model("reasoner", attn="eager")
    for i, arrays, _, meta in r.units():
        rows = arrays["rows"].astype(bool)
        maps = eager_maps(lm, arrays["tokens"].tolist())
        T = len(rows)
        t, s = np.arange(T)[:, None], np.arange(T)[None, :]
        dist = np.where(s <= t, t - s, 0)
        np.testing.assert_allclose(arrays["waad"], (maps * np.minimum(dist, 10)).sum(-1), rtol=1e-5, atol=1e-5)
        fai = np.full(maps.shape[:2] + (T,), np.nan)
        for key in range(T):
            ts = [x for x in range(T) if rows[x] and x >= key + 10]
            if ts:
                fai[:, :, key] = maps[:, :, ts, key].mean(-1)
        np.testing.assert_allclose(np.nan_to_num(arrays["fai_end"]), np.nan_to_num(fai), rtol=1e-5, atol=1e-5)
        assert rows.sum() == T - int(np.argmax(rows)) > 0  # the response, to the end
        if meta["has_deps"]:  # the greedy solution is the reference: every source lies before its reader
            assert arrays["sources"].sum() > 0
    # the stage: head spans from the stored arrays, groups as the metric functions make them
    res = rhythm_summary.summarize(out)
    d = np.mean([rm.head_span(a["span_term"], a["rows"].astype(bool)) for _, a, _, _ in r.units()], 0)
    np.testing.assert_allclose(res["d"], d)
    loc, glob = rm.head_groups(d, 0.3, 0.3)
    assert (res["local"] == loc).all() and (res["global"] == glob).all()
    stored, attrs = r.result("rhythm/head_span")
    np.testing.assert_allclose(stored, d)
    # other thresholds: refused without --overwrite (the file kept), redone with it
    assert cli_boundary(rhythm.main)(args + ["--local", "0.2"]) == 1
    assert "another request" in capsys.readouterr().err
    assert cli_boundary(rhythm.main)(args + ["--local", "0.2", "--overwrite"]) == 0
    assert CacheReader(out).result("rhythm/request")[1]["local"] == 0.2


def test_organism_end_to_end(organism_file):
    out = organism_file
    r = CacheReader(out)
    assert r.config["rows"] == "after-video"
    res = rhythm_summary.summarize(out)
    units = list(r.units())
    frames = units[0][3]["frames"]
    assert len(frames) == r.config["frames"]  # one span per frame on LLaVA-NeXT-Video
    # per-frame FAI: the mean over units of the frame's summed FAI, averaged over a layer's heads
    want = np.mean([np.stack([np.nan_to_num(a["fai_end"]).mean(1)[:, s:e].sum(-1) for s, e in m["frames"]], -1)
                    for _, a, _, m in units], 0)
    np.testing.assert_allclose(res["frame_fai"], want, rtol=1e-6)
    # frame x frame mass of the first unit: against the eager maps of its tokens
    lm = load_model("organism", attn="eager")
    from tasks.datasets import load_dataset
    from tracing.inputs import build_sample_inputs

    sample = load_dataset("synthetic", tasks=["direction"], limit=1, n_frames=r.config["frames"], seed=0).samples[0]
    inputs, _ = build_sample_inputs(lm, sample)
    a = units[0][1]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    maps = eager_maps(lm, a["tokens"].tolist(), extra)
    mass = np.array([[maps[:, :, q0:q1, k0:k1].sum((-1, -2)) for k0, k1 in frames] for q0, q1 in frames])
    np.testing.assert_allclose(a["frame_mass"], mass.transpose(2, 3, 0, 1), rtol=1e-5, atol=1e-5)
    names = r.config["spans"]  # the order of span_mass' axes
    assert names == ["system", "video", "question", "options", "trailing", "last", "response"]
    spans = [units[0][3]["spans"][n] for n in names]
    assert [s for s, _ in spans][1:] == [e for _, e in spans][:-1] and spans[-1][1] == len(a["tokens"])
    mass = np.array([[maps[:, :, q0:q1, k0:k1].sum((-1, -2)) for k0, k1 in spans] for q0, q1 in spans])
    np.testing.assert_allclose(a["span_mass"], mass.transpose(2, 3, 0, 1), rtol=1e-5, atol=1e-5)
    for name in ("token_strip", "head_span", "frame_fai", "frame_mass"):
        assert (out.parent / "fig" / f"{name}.png").stat().st_size > 0


def test_bad_flags_are_usage_errors(tmp_path, capsys):
    for bad, says in [(["--window", "0"], "--window 0"), (["--horizons", "v7"], "--horizons"),
                      (["--model", "organism", "--dataset", "reasoning"], "text"),
                      (["--rows", "after-video"], "no video")]:
        assert cli_boundary(rhythm.main)([*bad, "--out", str(tmp_path / "x.h5"), "--no-progress"]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_perturbation_by_hand():
    """The positions, the runner-up tokens and the rollout changes, against a
    greedy loop of plain forwards written here."""
    from analyses.rhythm_perturb import perturb
    from tasks.reasoning import problem_set
    from tracing.traces import trace_inputs

    lm = load_model("reasoner")
    inputs, layout = trace_inputs(lm.tokenizer, problem_set(["clock"], 1, seed=2000)[0])
    toks = inputs["input_ids"][0].numpy()
    T = len(toks)
    rows = np.arange(T) >= layout.extra["solution"][0]
    fai = np.random.default_rng(0).random(T)
    fai[-3:] = np.nan
    with torch.no_grad():
        logits = lm.model(**inputs).logits[0]
    got = perturb(lm, toks, logits, fai, rows, pairs=1, min_tail=5)[0]
    ok = [t for t in range(T) if rows[t] and not np.isnan(fai[t]) and t <= T - 6]
    for col, p in enumerate((max(ok, key=lambda t: fai[t]), min(ok, key=lambda t: fai[t]))):
        ranked = torch.argsort(logits[p - 1], descending=True).tolist()
        alt = ranked[1] if ranked[0] == toks[p] else ranked[0]
        ids, new = [int(x) for x in toks[:p]] + [alt], []
        with torch.no_grad():
            for _ in range(T - 1 - p):
                nxt = int(lm.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if nxt == lm.tokenizer.eos_token_id:
                    break
                ids.append(nxt)
                new.append(nxt)
        tail = toks[p + 1:]
        want = np.mean([i >= len(new) or new[i] != t for i, t in enumerate(tail)])
        assert got[col] == p and got[4 + col] == alt
        assert got[2 + col] == pytest.approx(want)


def test_perturbation_summary_by_hand():
    """Shares of more / as much / less, and the sign test worked by hand."""
    from analyses.rhythm_perturb import summary

    # columns 2 and 3: the high- and low-FAI change; a NaN row is a trial that could not run
    hl = [(0.5, 0.1)] * 5 + [(0.1, 0.3), (0.2, 0.2), (0.0, 0.0), (np.nan, 0.1)]
    trials = np.array([[0, 0, h, lo, 0, 0] for h, lo in hl])
    s = summary(trials)
    assert s["n"] == 8 and s["high_more"] == 5 / 8 and s["tie"] == 2 / 8 and s["low_more"] == 1 / 8
    # 5 "more" against 1 "less": P(>= 5 of 6 | 1/2) = (6 + 1) / 64, doubled for both tails
    assert s["p_value"] == pytest.approx(2 * 7 / 64)
    assert s["high_change"] == pytest.approx((2.5 + 0.1 + 0.2) / 8)


def test_traces_file(tmp_path, capsys):
    lm = load_model("reasoner")
    lines = ['{"id": "a", "prompt": "Ana left at 6:50. The bus took 10 minutes. When did Ana arrive?", '
             '"response": "6:50 + 0:10 = 7:00\\nAnswer: 7:00"}', "",
             '{"id": "b", "prompt": "Tom left at 9:05. The walk took 25 minutes. When did Tom arrive?", '
             '"response": "9:05 + 0:25 = 9:30\\nAnswer: 9:30"}']
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(lines))
    out = tmp_path / "f.h5"
    base = ["--traces", str(f), "--out", str(out), "--no-progress", "--draws", "10", "--perturb", "0"]
    assert cli_boundary(rhythm.main)(base) == 0
    r = CacheReader(out)
    assert r.samples["id"].tolist() == ["a", "b"] and r.config["response"] == "file"
    tok = lm.tokenizer
    for (i, a, _, _), item in zip(r.units(), [json.loads(lines[0]), json.loads(lines[2])]):
        prompt = [tok.bos_token_id] + tok(item["prompt"] + "\n", add_special_tokens=False)["input_ids"]
        whole = [tok.bos_token_id] + tok(item["prompt"] + "\n" + item["response"], add_special_tokens=False)["input_ids"]
        assert a["tokens"].tolist() == whole
        assert int(np.argmax(a["rows"])) == len(prompt)  # the rows start with the response
        assert a["boundaries"].sum() == 2  # the first token of each of the two response lines
    f.write_text(lines[0] + "\n{not json\n")
    assert cli_boundary(rhythm.main)(base + ["--out", str(tmp_path / "g.h5")]) == 2
    assert "line 2" in capsys.readouterr().err


def test_informative_frames_from_the_objects():
    from tasks.synthetic import informative_frames, render

    for seed in range(5):
        s = render("when", seed)
        target = [t for t, objs in enumerate(s.latents["objects"]) if any(o["color"] == s.latents["color"]
                                                                         for o in objs)]
        assert informative_frames(s) == target
        s = render("count", seed)
        assert informative_frames(s) == [t for t, objs in enumerate(s.latents["objects"]) if objs]
        s = render("direction", seed, n_frames=6)
        assert informative_frames(s) == [0, 5]
        assert informative_frames(render("static_color", seed)) is None


def test_informative_frames_check_by_hand():
    from analyses.rhythm_summary import informative_frames_check

    per = [np.array([4.0, 1, 1, 2]), np.array([1.0, 1, 1, 1]), np.array([1.0, 3, 0, 0])]
    got = informative_frames_check(per, ["count", "static_color", "count"], [[0, 1], None, [2]])
    c = got["count"]
    assert c["n"] == 2
    assert c["share"] == pytest.approx((5 / 8 + 0 / 4) / 2)
    assert c["uniform"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert c["control_share"] == pytest.approx((2 / 4 + 1 / 4) / 2)  # the static clip is flat
    assert c["peak"] == pytest.approx(0.5)  # argmax 0 in [0, 1]; argmax 1 not in [2]
    assert c["control_peak"] == pytest.approx(0.5)  # flat: argmax 0, in [0, 1], not in [2]
    assert "static_color" not in got


from _notebooks import run_notebook  # noqa: E402


def test_notebook_redraws_from_the_file(organism_file, tmp_path, monkeypatch):
    """On a video file every cell draws (a text file skips only the frame cell)."""
    out = organism_file
    outputs, n_images, text = run_notebook("rhythm.ipynb", {"CHRONOLENS_RHYTHM_H5": out}, tmp_path, monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert n_images == 5
    want = rhythm_summary.table(rhythm_summary.summarize(out, {"draws": 200}))
    assert want in text and str(out) in text


def test_findings_block_states_the_stored_rates(reasoner_file, organism_file):
    """python -m analyses.findings' rhythm block: the rates of both stored runs
    in its table, and sentences whose 'more' / 'less' follow them."""
    from analyses import findings_blocks

    text = findings_blocks.rhythm_block({"rhythm_reasoner": str(reasoner_file), "rhythm_organism": str(organism_file)})
    flat = " ".join(text.split())
    t, v = rhythm_summary.summarize(reasoner_file), rhythm_summary.summarize(organism_file)
    tf, vf = t["peak_follow"][1], v["peak_follow"][1]
    assert (f"| FAI peak at or right after a WAAD peak (k = 1) | {100 * tf.observed:.1f}% vs random "
            f"{100 * tf.baseline:.1f}% | {100 * vf.observed:.1f}% vs {100 * vf.baseline:.1f}% |") in text
    assert f"anchors come {'more' if tf.observed > tf.baseline else 'less'} often after a WAAD peak" in flat
    assert f"follow WAAD peaks {'more' if vf.observed > vf.baseline else 'less'} often" in flat
    b = t["boundary"]
    assert f"step starts {'more' if b.observed > b.baseline else 'less'} often than chance" in flat
    d = v["informative"]["direction"]
    assert f"direction {100 * d['share']:.1f}% vs {100 * d['control_share']:.1f}%" in flat
    assert f"{len(t['units'])} greedy traces of the reasoner" in flat and f"{len(v['units'])} organism traces" in flat
