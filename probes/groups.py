"""Linear probes fitted per group of samples (one probe per question, say) and
scored over all test samples, with Hewitt & Liang's control tasks: what the
T3 diagnostic (analyses/t3.py) reads from every stage and layer.

    acc, Cs = probe_accuracy(X, y, train, test, groups, probe_factory(), seeds, return_C=True)
    ctrl = control_accuracy(X, types, y, train, test, Cs, groups, probe_factory(), seeds)
    selectivity = acc - ctrl

Selectivity compares like with like only on test samples whose input type
recurs in training (a control label is memorised or not at all): score the
same probes there from their per-sample results,

    ok, Cs = probe_correct(X, y, train, test, groups, probe_factory(), seeds)
    ok_c = control_correct(X, types, y, train, test, Cs, groups, probe_factory(), seeds)
    rec = probes.control.recurring(types, train, test, groups)
    selectivity = accuracy_over(ok, rec) - accuracy_over(ok_c, rec)    # [n_seeds, L]
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from sklearn.base import clone

PROBE_SEEDS = (0, 1, 2, 3, 4)  # the T3 paper reports the mean over 5 seeds


PROBES = ("torch", "sklearn")


@dataclass(frozen=True)
class ProbeFactory:
    """seed -> a fresh linear probe (probes/linear.py): 'torch' (TorchProbe:
    every layer fitted as one batched problem, on `device`) or 'sklearn'
    (SklearnProbe, the reference loop of scikit-learn fits); the same
    estimator. C None: chosen per layer by cv-fold cross-validation, the folds
    drawn with the seed; a float or one per layer [L]: fixed. tol: the
    solvers' stopping tolerance (largest gradient entry), tighter than
    scikit-learn's 1e-4: with more features than samples the problem is
    nearly separable and flat at weak penalties, and at 1e-4 both solvers
    stop at points that depend on their paths (the two kinds' test
    accuracies then differ by a few samples); at 1e-8 they agree exactly."""

    kind: str = "torch"
    C: object = None
    cv: int = 3
    device: str = "cpu"
    tol: float = 1e-6

    def __post_init__(self):
        if self.kind not in PROBES:
            raise ValueError(f"unknown probe {self.kind!r}; probes: {PROBES}")

    def __call__(self, seed: int):
        """A fresh, unfitted probe (scikit-learn's ``clone`` of the prototype) seeded with ``seed``."""
        return clone(self.prototype()).set_params(random_state=seed)

    def prototype(self):
        from probes.sklearn_probe import SklearnProbe
        from probes.torch_probe import TorchProbe

        if self.kind == "torch":
            return TorchProbe(C=self.C, cv=self.cv, tol=self.tol, device=self.device)
        return SklearnProbe(C=self.C, cv=self.cv, tol=self.tol)

    def with_C(self, C) -> "ProbeFactory":
        """The same probe with C fixed (a float or one per layer)."""
        return replace(self, C=C)


def probe_factory(C: float | None = None, cv: int = 3, kind: str = "torch", device: str = "cpu",
                  tol: float = 1e-6) -> ProbeFactory:
    """A ProbeFactory (seed -> probe): 'torch' (the default) or 'sklearn'."""
    return ProbeFactory(kind, C, cv, device, tol)


def _fit_groups(X, y, train, test, groups, factory, seeds, what, Cs=None):
    """Fit one probe per group and seed and score it on the group's test
    samples -> (correct [n_seeds, L, N]: 1.0 where the probe of that seed and
    layer got test sample n right, 0.0 where wrong, NaN off the test split;
    {group: C [n_seeds, L]}). Cs {group: [n_seeds, L]}: fix C per group, seed
    and layer (factory.with_C); a group whose training labels hold one class
    then predicts that class (for control labels, a legitimate draw). Without
    Cs, one class is an error."""
    correct, chosen = np.full((len(seeds), X.shape[0], len(y)), np.nan), {}
    for g in np.unique(groups[test]):
        tr, te = train & (groups == g), test & (groups == g)
        classes = np.unique(y[tr])
        if len(classes) < 2 and Cs is not None:
            correct[:, :, te] = y[te] == classes[0]
            continue
        if len(classes) < 2:
            raise ValueError(f"probe {what} (group {g!r}): its training samples hold one class "
                             f"{classes.tolist()}; raise --samples")
        for r, seed in enumerate(seeds):
            make = factory if Cs is None else factory.with_C(Cs[g][r])
            probe = make(seed).fit(X[:, tr], y[tr])
            pred = np.asarray(probe.predict(X[:, te]))
            correct[r][:, te] = (pred[None] if pred.ndim == 1 else pred) == y[te]
            if hasattr(probe, "C_"):
                chosen.setdefault(g, np.empty((len(seeds), X.shape[0])))[r] = np.broadcast_to(
                    probe.C_, (X.shape[0],))
    return correct, chosen


def accuracy_over(correct: np.ndarray, mask) -> np.ndarray:
    """Accuracy over the samples of ``mask`` [N] from per-sample scores
    ``correct`` [..., N] (probe_correct, control_correct) -> [...]; NaN where
    the mask holds no sample (or a masked sample was not scored)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(correct.shape[:-1], np.nan)
    return correct[..., mask].mean(-1)


def _as_arrays(X, y, train, test, groups):
    X = np.asarray(X)
    X = X[None] if X.ndim == 2 else X
    groups = np.zeros(len(y), int) if groups is None else np.asarray(groups)
    return X, np.asarray(y), np.asarray(train, bool), np.asarray(test, bool), groups


def probe_correct(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, groups=None,
                  factory=None, seeds=PROBE_SEEDS, what: str = ""):
    """Per test sample, whether the probe got it right -> (correct [n_seeds,
    L, N]: 1.0 / 0.0 on the test samples, NaN elsewhere; the C each probe
    used {group: [n_seeds, L]}). Arguments as probe_accuracy, which is
    ``accuracy_over(correct, test)``; ``accuracy_over(correct, mask)``
    scores the same probes on a subset of the test samples."""
    X, y, train, test, groups = _as_arrays(X, y, train, test, groups)
    return _fit_groups(X, y, train, test, groups, factory or probe_factory(), tuple(seeds), what)


def probe_accuracy(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, groups=None,
                   factory=None, seeds=PROBE_SEEDS, what: str = "", return_C: bool = False):
    """Test accuracy of linear probes -> [n_seeds, L] (and, with return_C, the
    C each probe used {group: [n_seeds, L]}).

    X: [L, N, D] (L layers or stages of equal width) or [N, D]; y: labels [N];
    train, test: boolean masks [N]. groups: [N] keys or None; with keys, one
    probe is fitted per group on its training samples and scored on its test
    samples, and the accuracy is over all test samples. factory: seed -> probe
    (default probe_factory()). `what` names the probe in errors.
    """
    correct, Cs = probe_correct(X, y, train, test, groups, factory, seeds, what)
    acc = accuracy_over(correct, test)
    return (acc, Cs) if return_C else acc


def control_correct(X: np.ndarray, types, y: np.ndarray, train: np.ndarray, test: np.ndarray, Cs: dict,
                    groups=None, factory=None, seeds=PROBE_SEEDS, what: str = "") -> np.ndarray:
    """control_accuracy per test sample -> correct [n_seeds, L, N] (1.0 / 0.0
    on the test samples, NaN elsewhere); control_accuracy is
    ``accuracy_over(correct, test)``."""
    from probes.control import control_labels

    X, y, train, test, groups = _as_arrays(X, y, train, test, groups)
    factory = factory or probe_factory()
    types = np.asarray(types)
    if types.shape != y.shape:
        raise ValueError(f"types: {types.shape[0]} types for {y.shape[0]} samples")
    out = np.empty((len(seeds), X.shape[0], len(y)))
    for r, seed in enumerate(seeds):
        yc = control_labels(types, len(np.unique(y)), seed=seed, labels=y)
        Cr = {g: C[r:r + 1] for g, C in Cs.items()}
        out[r] = _fit_groups(X, yc, train, test, groups, factory, (seed,), f"{what} control", Cr)[0][0]
    return out


def control_accuracy(X: np.ndarray, types, y: np.ndarray, train: np.ndarray, test: np.ndarray, Cs: dict,
                     groups=None, factory=None, seeds=PROBE_SEEDS, what: str = "") -> np.ndarray:
    """Test accuracy on the control task -> [n_seeds, L] (Hewitt & Liang, 2019).

    For seed r the labels are probes.control.control_labels(types, seed=r,
    labels=y): each input type [N] gets one label, drawn from the real labels'
    distribution, the same in both splits. The probe of each group, seed and
    layer keeps the C it had on the real task (Cs, from probe_accuracy's
    return_C), so that the two accuracies compare one probe on two tasks;
    factory must offer with_C (a ProbeFactory). Other arguments as
    probe_accuracy; selectivity is probe_accuracy - control_accuracy.

    A test sample whose type never occurs in training cannot be memorised:
    its control label is a guess, which caps the control accuracy and
    inflates selectivity. Score both tasks on the recurring test samples
    (probes.control.recurring) with probe_correct / control_correct and
    accuracy_over to compare like with like.
    """
    test = np.asarray(test, bool)
    return accuracy_over(control_correct(X, types, y, train, test, Cs, groups, factory, seeds, what), test)
