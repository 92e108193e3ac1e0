"""SklearnProbe: the linear probe of probes/linear.py as a loop of scikit-learn
fits, the reference that TorchProbe is tested against."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression

from probes.linear import DEFAULT_CS, C_per_layer, as_layers, class_codes, cv_folds, select_C, sorted_Cs


class SklearnProbe(BaseEstimator):
    """The reference: the same estimator as TorchProbe, as a loop of scikit-learn fits.

    Per layer: StandardScaler-style statistics of the training data, then for
    each of the same stratified folds (same seed) a path of
    LogisticRegression(lbfgs) fits over the sorted Cs, each warm-started from
    the previous one, scored by held-out accuracy (what LogisticRegressionCV
    does); the best mean C (ties to the smaller C); a refit on all training
    data warm-started from the mean of that C's fold solutions. tol is
    scikit-learn's (largest gradient entry). Same attributes as TorchProbe.
    """

    def __init__(self, C=None, Cs=DEFAULT_CS, cv: int = 3, max_iter: int = 1000, tol: float = 1e-4,
                 random_state: int = 0):
        self.C, self.Cs, self.cv, self.max_iter, self.tol = C, Cs, cv, max_iter, tol
        self.random_state = random_state

    def _lr(self, C, warm):
        return LogisticRegression(C=C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol, warm_start=warm)

    def fit(self, X, y) -> "SklearnProbe":
        """Fit on X [L, N, D] or [N, D] and labels y [N]."""
        X = as_layers(np.asarray(X), "X")
        L, N, D = X.shape
        self.classes_, codes = class_codes(y, N)
        K = len(self.classes_)
        self.mean_, self.scale_ = np.empty((L, D)), np.empty((L, D))
        self.coef_, self.intercept_ = np.zeros((L, D, K)), np.zeros((L, K))
        self.Cs_ = Cs = sorted_Cs(self.Cs)
        folds = cv_folds(codes, self.cv, self.random_state) if self.C is None else []
        self.cv_scores_ = np.empty((L, len(folds), len(Cs)))
        self.n_iter_cv_ = np.zeros((L, len(folds), len(Cs)), dtype=int)
        self.C_ = np.empty(L) if self.C is None else C_per_layer(self.C, L)
        self.n_iter_ = np.empty(L, dtype=int)
        for l in range(L):
            Xl = X[l].astype(np.float64)
            self.mean_[l] = Xl.mean(0)
            sd = Xl.std(0)
            tiny = sd <= 10 * np.finfo(np.float64).eps * np.maximum(np.abs(self.mean_[l]), 1)
            self.scale_[l] = np.where(tiny, 1.0, sd)
            Xl = (Xl - self.mean_[l]) / self.scale_[l]
            path = []                                   # [fold][C] -> (coef, intercept)
            for i, (tr, va) in enumerate(folds):
                m = self._lr(Cs[0], warm=True)
                path.append([])
                for c, C in enumerate(Cs):
                    m.set_params(C=C).fit(Xl[tr], codes[tr])
                    self.cv_scores_[l, i, c] = m.score(Xl[va], codes[va])
                    self.n_iter_cv_[l, i, c] = m.n_iter_[0]
                    path[i].append((m.coef_.copy(), m.intercept_.copy()))
            m = self._lr(self.C_[l] if self.C is not None else 1.0, warm=self.C is None)
            if self.C is None:
                best = int(select_C(self.cv_scores_[l:l + 1], Cs)[1][0])
                self.C_[l] = Cs[best]
                m.set_params(C=Cs[best])
                m.coef_ = np.mean([p[best][0] for p in path], axis=0)
                m.intercept_ = np.mean([p[best][1] for p in path], axis=0)
            m.fit(Xl, codes)
            self.n_iter_[l] = m.n_iter_[0]
            if K == 2:
                self.coef_[l, :, 1], self.intercept_[l, 1] = m.coef_[0], m.intercept_[0]
            else:
                self.coef_[l], self.intercept_[l] = m.coef_.T, m.intercept_
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits [L, N, K] of X [L, N, D] or [N, D]."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("SklearnProbe: call fit before predicting")
        X = as_layers(np.asarray(X), "X").astype(np.float64)
        if X.shape[0] != self.coef_.shape[0] or X.shape[2] != self.coef_.shape[1]:
            raise ValueError(f"X: shape {X.shape} does not match the fitted "
                             f"[{self.coef_.shape[0]}, N, {self.coef_.shape[1]}]")
        Xs = (X - self.mean_[:, None]) / self.scale_[:, None]
        return np.einsum("lnd,ldk->lnk", Xs, self.coef_) + self.intercept_[:, None]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities [L, N, K]."""
        z = self.decision_function(X)
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Predicted labels [L, N]."""
        return self.classes_[self.decision_function(X).argmax(-1)]

    def score(self, X, y) -> np.ndarray:
        """Accuracy per layer [L]."""
        return (self.predict(X) == np.asarray(y)[None]).mean(1)
