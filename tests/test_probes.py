"""probes/: the batched torch probe against scikit-learn, control tasks,
evaluation over seeds, and feature selection from a cache written by the store."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from probes.control import control_labels, recurring, selectivity
from probes.data import RunningStandardizer, complete_indices, iter_feature_chunks, load_features, load_labels
from probes.evaluate import accuracy, balanced_accuracy, chance_level, evaluate_probe
from probes.linear import cv_folds
from probes.sklearn_probe import SklearnProbe
from probes.torch_probe import TorchProbe
from tracing.store import CacheReader, CacheWriter, SampleMeta

torch.set_num_threads(1)
threadpool_limits(1)          # BLAS threads: tiny scikit-learn fits only lose by threading


def planted(L, N, D, K=3, strength=1.0, seed=0):
    """Features [L, N, D] float32 with a class signal of the given strength along
    4 random directions, on top of a few strong nuisance directions; labels [N]
    balanced over K classes."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(N) % K)
    X = rng.standard_normal((L, N, D))
    nuisance = rng.standard_normal((L, N, 4)) @ rng.standard_normal((4, D)) * 2
    signal = rng.standard_normal((K, D))
    signal[:, 4:] = 0
    X = X + nuisance + strength * signal[y] @ np.linalg.qr(rng.standard_normal((D, D)))[0]
    return X.astype(np.float32), y


# ---------------------------------------------------------------- TorchProbe == scikit-learn

@pytest.mark.parametrize("space,D", [("primal", 30), ("dual", 250)])
@pytest.mark.parametrize("K", [3, 2])
def test_fixed_C_matches_sklearn(space, D, K):
    """At C=1 both reach the same optimum: probabilities and weights agree."""
    X, y = planted(2, 240, D, K=K, strength=0.6, seed=K)
    Xtr, ytr, Xte = X[:, :150], y[:150], X[:, 150:]
    sk = SklearnProbe(C=1.0, tol=1e-9).fit(Xtr, ytr)
    # an independent reference: plain LogisticRegression on hand-standardised features
    x0 = Xtr[0].astype(np.float64)
    m, s = x0.mean(0), x0.std(0)
    ref = LogisticRegression(C=1.0, tol=1e-9, max_iter=5000).fit((x0 - m) / s, ytr)
    assert np.abs(ref.predict_proba((Xte[0] - m) / s) - sk.predict_proba(Xte)[0]).max() < 1e-6
    for dtype, bound in ((torch.float32, 1e-3), (torch.float64, 1e-5)):
        tp = TorchProbe(C=1.0, tol=1e-9, dtype=dtype, space=space).fit(Xtr, ytr)
        assert tp.coef_.shape == (2, D, K) and tp.intercept_.shape == (2, K)
        assert np.abs(tp.predict_proba(Xte) - sk.predict_proba(Xte)).max() < bound
        assert np.abs(tp.coef_ - sk.coef_).max() < bound * np.abs(sk.coef_).max()
        assert (tp.predict(Xte) == sk.predict(Xte)).mean() > 0.99


@pytest.mark.parametrize("space,D,strength", [("primal", 30, 0.5), ("dual", 250, 1.0)])
def test_cross_validated_matches_sklearn(space, D, strength):
    """Same folds, same C grid: test accuracy within 1 point, and a C that is
    (near-)best by scikit-learn's own CV scores. Both are run to tol 1e-6:
    at the default 1e-4 neither solver has converged at weak penalties when
    N < D (the problem is nearly separable and flat), so their CV scores there
    depend on the path each solver took, and near-ties between Cs can flip."""
    X, y = planted(2, 350, D, strength=strength, seed=1)
    Xtr, ytr, Xte, yte = X[:, :200], y[:200], X[:, 200:], y[200:]
    Cs = (0.01, 0.1, 1.0, 10.0)
    tp = TorchProbe(Cs=Cs, tol=1e-6, space=space).fit(Xtr, ytr)
    sk = SklearnProbe(Cs=Cs, tol=1e-6).fit(Xtr, ytr)
    assert tp.cv_scores_.shape == sk.cv_scores_.shape == (2, 3, 4)
    assert np.abs(tp.score(Xte, yte) - sk.score(Xte, yte)).max() <= 0.01
    assert np.abs(tp.cv_scores_ - sk.cv_scores_).max() <= 0.02
    # where two Cs tie to a validation sample or two, either may win
    sk_mean = sk.cv_scores_.mean(1)
    chosen = sk_mean[np.arange(2), np.searchsorted(sk.Cs_, tp.C_)]
    assert (sk_mean.max(1) - chosen <= 0.01).all()
    assert np.abs(tp.cv_scores_ - sk.cv_scores_).mean() < 0.01


def wide_separable(seed, N=24, D=512, K=4):
    """Few samples, many features of large norm (a shared offset of ~300 and a
    class signal of ~50 per feature), perfectly separable: the shape and scale
    of the organism's T3 features (frames concatenated, [~24, 1024])."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % K
    X = 50.0 * (rng.standard_normal((K, D))[y] + rng.standard_normal((N, D))) + 300.0 * rng.standard_normal(D)
    return X.astype(np.float32), y


def test_wide_separable_data_matches_sklearn_coefficients():
    """Regression: the dual space let alpha (W = X^T alpha) grow without bound
    along null(G) (the all-ones vector of centred data; duplicated rows), which
    the metric does not see; W came out ~1e4-1e6 instead of ~0.05 and
    probabilities were wrong (seed 3, C=1: off by 1.0). First problem: seeds 0
    and 3 as two layers (N <= k + 1: the exact spectrum); second: seed 2 with
    every row three times (N > k + 1: the randomized one, with null directions
    beyond the ones vector)."""
    (Xa, y), (Xb, _), (Xc, _) = wide_separable(0), wide_separable(3), wide_separable(2)
    for X, y in ((np.stack([Xa, Xb]), y), (np.tile(Xc, (3, 1)), np.tile(y, 3))):
        for C in (1.0, 100.0):
            sk = SklearnProbe(C=C, tol=1e-10, max_iter=10000).fit(X, y)
            tight = TorchProbe(C=C, tol=1e-8).fit(X, y)
            assert np.abs(tight.coef_ - sk.coef_).max() < 1e-3 * np.abs(sk.coef_).max()
            assert np.abs(tight.intercept_ - sk.intercept_).max() < 1e-3
            assert np.abs(tight.predict_proba(X) - sk.predict_proba(X)).max() < 1e-5
            default = TorchProbe(C=C).fit(X, y)           # tol 1e-4: the same point up to that tolerance
            ratio = np.abs(default.coef_).max((1, 2)) / np.abs(sk.coef_).max((1, 2))
            assert ((0.8 < ratio) & (ratio < 1.25)).all(), ratio
            assert np.abs(default.predict_proba(X) - sk.predict_proba(X)).max() < 2e-3
        cv_t, cv_s = TorchProbe().fit(X, y), SklearnProbe().fit(X, y)
        np.testing.assert_array_equal(cv_t.C_, cv_s.C_)
        assert np.abs(cv_t.coef_ - cv_s.coef_).max() < 1e-2 * np.abs(cv_s.coef_).max()


def test_planted_signal_found_and_shuffled_labels_at_chance():
    X, y = planted(2, 900, 40, K=3, strength=1.0, seed=2)
    Xtr, ytr, Xte, yte = X[:, :300], y[:300], X[:, 300:], y[300:]
    chance = 1 / 3
    for probe in (TorchProbe(), SklearnProbe()):
        assert (probe.fit(Xtr, ytr).score(Xte, yte) > chance + 0.3).all()
    # labels permuted independently of the features: given the fitted probe,
    # test accuracy is a sum of 600 indicators with mean exactly 1/3 (the test
    # labels are balanced), so it lies within 4 binomial sd of 1/3 unless
    # something leaks (false alarm < 1e-4)
    rng = np.random.default_rng(0)
    ytr_s, yte_s = rng.permutation(ytr), rng.permutation(np.arange(600) % 3)
    tol = 4 * np.sqrt(chance * (1 - chance) / len(yte_s))
    for probe in (TorchProbe(), SklearnProbe()):
        acc = probe.fit(Xtr, ytr_s).score(Xte, yte_s)
        assert (np.abs(acc - chance) < tol).all(), acc


@pytest.mark.parametrize("space,D", [("primal", 30), ("dual", 300)])
def test_batched_layers_equal_separate_fits(space, D):
    """Each layer's problem is independent: fitting L layers at once gives each
    layer what fitting it alone gives."""
    X, y = planted(3, 240, D, strength=0.5, seed=3)
    X[1] *= 7.0          # layers on different scales, with different difficulty
    X[2] = X[2][:, ::-1]
    both = TorchProbe(space=space, dtype=torch.float64).fit(X, y)
    in_twos = TorchProbe(space=space, dtype=torch.float64, layer_batch=2).fit(X, y)   # batches [0, 1], [2]
    np.testing.assert_array_equal(in_twos.cv_scores_, both.cv_scores_)
    np.testing.assert_allclose(in_twos.coef_, both.coef_, rtol=1e-6, atol=1e-8 * np.abs(both.coef_).max())
    for l in range(3):
        one = TorchProbe(space=space, dtype=torch.float64).fit(X[l], y)
        assert one.C_[0] == both.C_[l]
        np.testing.assert_array_equal(one.cv_scores_[0], both.cv_scores_[l])
        np.testing.assert_allclose(one.coef_[0], both.coef_[l], rtol=1e-6, atol=1e-8 * np.abs(one.coef_).max())
        np.testing.assert_allclose(one.intercept_[0], both.intercept_[l], rtol=1e-6, atol=1e-8)


def test_deterministic_given_seed():
    X, y = planted(2, 240, 50, strength=0.4, seed=4)
    a = TorchProbe(random_state=7).fit(X, y)
    b = TorchProbe(random_state=7).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.cv_scores_, b.cv_scores_)
    assert [f[1].tolist() for f in cv_folds(y, 3, 7)] == [f[1].tolist() for f in cv_folds(y, 3, 7)]
    assert [f[1].tolist() for f in cv_folds(y, 3, 7)] != [f[1].tolist() for f in cv_folds(y, 3, 8)]
    c = TorchProbe(random_state=8).fit(X, y)
    assert not np.array_equal(a.cv_scores_, c.cv_scores_)       # other folds, other CV scores


def test_probes_are_scikit_learn_estimators():
    """get_params / set_params / clone work as for any estimator, and a clone
    fitted with the same random_state gives the same probe."""
    from sklearn.base import clone

    X, y = planted(2, 120, 20, strength=0.4, seed=5)
    for probe in (TorchProbe(C=0.5, cv=4, random_state=3), SklearnProbe(C=0.5, cv=4, random_state=3)):
        params = probe.get_params()
        assert params["C"] == 0.5 and params["cv"] == 4 and params["random_state"] == 3
        twin = clone(probe)
        assert twin is not probe and twin.get_params() == params and not hasattr(twin, "coef_")
        assert clone(probe).set_params(random_state=9).random_state == 9
        np.testing.assert_array_equal(probe.fit(X, y).coef_, twin.fit(X, y).coef_)


def test_bad_arguments_are_named():
    X, y = planted(1, 60, 5)
    with pytest.raises(ValueError, match="X"):
        TorchProbe().fit(X[0, 0], y)
    with pytest.raises(ValueError, match="labels for"):
        TorchProbe().fit(X, y[:-1])
    with pytest.raises(ValueError, match="space"):
        TorchProbe(space="kernel").fit(X, y)
    with pytest.raises(ValueError, match="does not match"):
        TorchProbe(C=1.0).fit(X, y).predict(X[:, :, :4])


# ---------------------------------------------------------------- control tasks

def test_control_labels_are_a_fixed_function_of_type():
    types = np.array(["a", "b", "a", "c", "b", "a", "d"])
    lab = control_labels(types, n_classes=3, seed=0)
    for t in np.unique(types):
        assert len(set(lab[types == t])) == 1
    # the label of a type does not depend on the other samples or their order
    perm = np.array([6, 5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(control_labels(types[perm], 3, seed=0), lab[perm])
    np.testing.assert_array_equal(control_labels(types[:3], 3, seed=0), lab[:3])
    np.testing.assert_array_equal(control_labels(types, 3, seed=0), lab)
    many = np.arange(3000)
    assert not np.array_equal(control_labels(many, 3, seed=0), control_labels(many, 3, seed=1))


def test_control_labels_follow_the_real_class_distribution():
    rng = np.random.default_rng(0)
    real = rng.choice(["x", "y", "z"], size=4000, p=[0.5, 0.3, 0.2])
    types = np.arange(4000)                              # one type per sample: each a fresh draw
    ctrl = control_labels(types, 3, seed=0, labels=real)
    assert set(ctrl) <= {"x", "y", "z"}
    for cls, p in (("x", 0.5), ("y", 0.3), ("z", 0.2)):
        assert abs((ctrl == cls).mean() - p) < 4 * np.sqrt(p * (1 - p) / 4000)


def test_selectivity_by_hand():
    # real task 0.82, control task 0.47 -> 0.35; per layer
    assert selectivity(0.82, 0.47) == pytest.approx(0.35)
    np.testing.assert_allclose(selectivity([0.9, 0.6, 0.5], [0.5, 0.55, 0.5]), [0.4, 0.05, 0.0])


def test_recurring_types_against_sets():
    rng = np.random.default_rng(0)
    n = 200
    types = rng.choice([f"t{i}" for i in range(60)], size=n)
    groups = rng.integers(3, size=n)
    train = rng.random(n) < 0.5
    test = ~train & (rng.random(n) < 0.9)            # some samples in neither split
    for g in (None, groups):
        key = list(zip(types, [0] * n if g is None else g))
        seen = {k for k, t in zip(key, train) if t}
        expect = [bool(te and k in seen) for k, te in zip(key, test)]
        assert recurring(types, train, test, g).tolist() == expect
    # pooled, a type recurs wherever in training it occurs; per group, only in its group's
    assert (recurring(types, train, test, groups) <= recurring(types, train, test)).all()
    assert recurring(types, train, test, groups).sum() < recurring(types, train, test).sum()
    assert not recurring(["a", "b"], [True, False], [False, True]).any()
    with pytest.raises(ValueError, match="one length"):
        recurring(types[:3], train, test)


def test_selectivity_on_recurring_types_equals_probes_scored_on_that_subset():
    """The per-sample scores of probe_correct / control_correct, averaged over
    the recurring test samples, equal the public accuracies refitted with the
    test split cut down to those samples, and an independent scikit-learn
    LogisticRegression on the same standardised features; a mask with no
    sample gives NaN."""
    from probes.groups import accuracy_over, control_accuracy, control_correct, probe_accuracy, probe_correct, \
        probe_factory

    rng = np.random.default_rng(1)
    X, y = planted(2, 160, 12, K=3, strength=1.5, seed=2)
    types = rng.integers(40, size=160)
    train = np.arange(160) < 80
    test = ~train
    rec = recurring(types, train, test)
    assert 0 < rec.sum() < test.sum()
    f = probe_factory(C=0.5, kind="sklearn", tol=1e-8)
    seeds = (0, 1)
    ok, Cs = probe_correct(X, y, train, test, None, f, seeds)
    ok_c = control_correct(X, types, y, train, test, Cs, None, f, seeds)
    assert ok.shape == ok_c.shape == (2, 2, 160) and np.isnan(ok[..., train]).all()
    sel = accuracy_over(ok, rec) - accuracy_over(ok_c, rec)
    np.testing.assert_allclose(accuracy_over(ok, test), probe_accuracy(X, y, train, test, None, f, seeds))
    np.testing.assert_allclose(accuracy_over(ok_c, test), control_accuracy(X, types, y, train, test, Cs, None, f,
                                                                           seeds))
    by_subset = (probe_accuracy(X, y, train, rec, None, f, seeds)
                 - control_accuracy(X, types, y, train, rec, Cs, None, f, seeds))
    np.testing.assert_allclose(sel, by_subset)
    # scikit-learn alone, on the first layer, seed 1's control labels
    m, sd = X[0, train].mean(0), X[0, train].std(0)
    lr = lambda lab: LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit((X[0, train] - m) / sd, lab[train])
    z = (X[0, rec] - m) / sd
    yc = control_labels(types, 3, seed=1, labels=y)
    assert sel[1, 0] == pytest.approx((lr(y).predict(z) == y[rec]).mean() - (lr(yc).predict(z) == yc[rec]).mean())
    assert np.isnan(accuracy_over(ok, np.zeros(160, bool))).all()


# ---------------------------------------------------------------- evaluation

def test_metrics_by_hand():
    y, p = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
    assert accuracy(y, p) == pytest.approx(0.75)
    assert balanced_accuracy(y, p) == pytest.approx((2 / 3 + 1) / 2)
    np.testing.assert_allclose(accuracy(y, np.stack([p, y])), [0.75, 1.0])
    assert chance_level([0, 0, 0, 1, 2]) == {"majority": 0.6, "uniform": pytest.approx(1 / 3), "n_classes": 3}


def test_evaluate_probe_mean_and_std_over_seeds():
    X, y = planted(2, 300, 20, strength=0.5, seed=5)
    Xtr, ytr, Xte, yte = X[:, :200], y[:200], X[:, 200:], y[200:]
    res = evaluate_probe(lambda s: TorchProbe(random_state=s), Xtr, ytr, Xte, yte, seeds=(0, 1, 2))
    by_hand = np.array([TorchProbe(random_state=s).fit(Xtr, ytr).score(Xte, yte) for s in (0, 1, 2)])
    np.testing.assert_allclose(res["accuracy"], by_hand)
    np.testing.assert_allclose(res["accuracy_mean"], by_hand.mean(0))
    np.testing.assert_allclose(res["accuracy_std"], by_hand.std(0))
    assert res["balanced_accuracy"].shape == (3, 2) and res["C"].shape == (3, 2)
    assert res["chance"]["uniform"] == pytest.approx(1 / 3)

    def split(seed):                                     # a different split per seed
        idx = np.random.default_rng(seed).permutation(300)
        return idx[:200], idx[200:]
    res = evaluate_probe(lambda s: SklearnProbe(C=1.0), X, y, seeds=(0, 1), split_fn=split)
    for i, s in enumerate((0, 1)):
        tr, te = split(s)
        expect = SklearnProbe(C=1.0).fit(X[:, tr], y[tr]).score(X[:, te], y[te])
        np.testing.assert_allclose(res["accuracy"][i], expect)
    with pytest.raises(ValueError, match="split_fn"):
        evaluate_probe(lambda s: TorchProbe(), X, y, X, y, split_fn=split)


# ---------------------------------------------------------------- reading the cache

@pytest.fixture
def cache(tmp_path):
    """A file written through the store: 7 samples, 2 and 4 never written (not
    complete); two float16 layers [D] and a variable-length float32 hook
    [T_i, 3]. Returns (path, complete [7], lengths [7], {hook: the arrays
    written, [7, ...] with zeros for unwritten samples and padding})."""
    rng = np.random.default_rng(0)
    n, D, T = 7, 5, 4
    path = tmp_path / "run.h5"
    complete = np.array([1, 1, 0, 1, 0, 1, 1], bool)
    lengths = np.array([4, 2, 3, 3, 1, 1, 4])
    written = {f"blocks.{l}.hook_resid_post": rng.standard_normal((n, D)).astype(np.float16) for l in range(2)}
    v = rng.standard_normal((n, T, 3)).astype(np.float32)
    v[np.arange(T)[None, :] >= lengths[:, None]] = 0          # beyond each sample's length
    written["vision.hook_out"] = v
    for x in written.values():
        x[~complete] = 0
    samples = [SampleMeta(f"s{i}", "order", i % 3, i % 2) for i in range(n)]
    hooks = {f"blocks.{l}.hook_resid_post": ((D,), np.float16) for l in range(2)}
    hooks["vision.hook_out"] = ((T, 3), np.float32)
    with CacheWriter.open(path, "tiny-test", "fp0", "synthetic", {"probe_test": 1}, samples, hooks) as w:
        for i in np.flatnonzero(complete):
            acts = {h: x[i] for h, x in written.items()}
            acts["vision.hook_out"] = v[i, :lengths[i]]
            w.write_sample(int(i), acts, layout={})
        assert w.pending() == [2, 4]
    return path, complete, lengths, written


def test_reader_full_and_chunked_reads_agree_and_skip_incomplete(cache):
    path, complete, _, written = cache
    reader = CacheReader(path)
    hook = "blocks.1.hook_resid_post"
    direct = written[hook][complete].astype(np.float32)
    full = load_features(reader, hook)
    np.testing.assert_array_equal(full, direct)
    assert full.dtype == np.float32
    np.testing.assert_array_equal(complete_indices(reader), [0, 1, 3, 5, 6])
    for size in (1, 2, 3, 100):
        chunks = list(iter_feature_chunks(reader, hook, size))
        assert all(len(i) <= size for i, _ in chunks)
        np.testing.assert_array_equal(np.concatenate([i for i, _ in chunks]), [0, 1, 3, 5, 6])
        np.testing.assert_array_equal(np.concatenate([x for _, x in chunks]), full)
    both = load_features(reader, ["blocks.0.hook_resid_post", hook])
    assert both.shape == (2, 5, 5)
    np.testing.assert_array_equal(both[0], written["blocks.0.hook_resid_post"][complete].astype(np.float32))
    np.testing.assert_array_equal(both[1], full)
    np.testing.assert_array_equal(load_features(reader, hook, samples=[5, 0]), direct[[3, 0]])
    np.testing.assert_array_equal(load_labels(reader), [0, 1, 0, 2, 0])
    np.testing.assert_array_equal(load_labels(reader, samples=[6, 3], field="id"), ["s6", "s3"])
    np.testing.assert_array_equal(load_labels(reader, field="answer"), [0, 1, 1, 1, 0])
    with pytest.raises(ValueError, match=r"samples \[2\] are not complete"):
        load_features(reader, hook, samples=[0, 2])
    with pytest.raises(IndexError, match=r"\[7\] out of range"):
        load_labels(reader, samples=[0, 7])
    with pytest.raises(KeyError, match="blocks.9.hook_resid_post"):
        load_features(reader, "blocks.9.hook_resid_post")
    with pytest.raises(KeyError, match="colour"):
        load_labels(reader, field="colour")
    with pytest.raises(ValueError, match="token axis"):
        load_features(reader, hook, positions=-1)


def test_reader_positions_use_each_samples_true_length(cache):
    path, complete, lengths, written = cache
    reader = CacheReader(path)
    v = written["vision.hook_out"]
    keep = np.flatnonzero(complete)
    last = load_features(reader, "vision.hook_out", positions=-1)
    np.testing.assert_array_equal(last, np.stack([v[i, lengths[i] - 1] for i in keep]))
    mean = load_features(reader, "vision.hook_out", positions="mean")
    np.testing.assert_allclose(mean, np.stack([v[i, :lengths[i]].mean(0) for i in keep]), rtol=1e-6)
    first_two = load_features(reader, "vision.hook_out", samples=[0, 6], positions=[0, 1])
    np.testing.assert_array_equal(first_two, v[[0, 6], :2])
    chunked = np.concatenate([x for _, x in iter_feature_chunks(reader, "vision.hook_out", 2, positions=-1)])
    np.testing.assert_array_equal(chunked, last)
    same_length = load_features(reader, "vision.hook_out", samples=[0, 6])    # both 4 tokens: no positions needed
    np.testing.assert_array_equal(same_length, v[[0, 6]])
    with pytest.raises(ValueError, match="pass positions"):
        load_features(reader, "vision.hook_out")
    with pytest.raises(IndexError, match="outside the 1 tokens of sample 5"):
        load_features(reader, "vision.hook_out", positions=1)


def test_running_standardizer_equals_full_statistics(cache):
    reader = CacheReader(cache[0])
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    full = load_features(reader, hooks).astype(np.float64)              # [2, 5, 5]
    rs = RunningStandardizer()
    for _, x in iter_feature_chunks(reader, hooks, 2):
        rs.partial_fit(x)
    assert rs.n_samples_seen_ == 5
    np.testing.assert_allclose(rs.mean_, full.mean(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rs.var_, full.var(1), rtol=1e-10)
    expect = (full - full.mean(1, keepdims=True)) / full.std(1, keepdims=True)
    np.testing.assert_allclose(rs.transform(full, np.float64), expect, rtol=1e-8, atol=1e-10)
