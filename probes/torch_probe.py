"""TorchProbe: the linear probe of probes/linear.py with every layer (and, during
cross-validation, every fold) fitted as one batched problem in torch
(problems in probes/spaces.py, solver in probes/lbfgs.py)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator

from probes.lbfgs import lbfgs
from probes.linear import DEFAULT_CS, C_per_layer, as_layers, class_codes, cv_folds, select_C, sorted_Cs
from probes.spaces import Dual, Primal, gram, spectrum_dual, spectrum_primal


def _standardise(X, dtype, ones: bool):
    """X [L, N, D] tensor -> (Xs [L, N, D] in dtype, mean [L, D], scale [L, D]),
    one layer at a time; constant features get scale 1. With ones, Xs is a
    view into a buffer [L, N, D+1] whose last column is 1 (returned as a fourth
    item), so the primal space needs no second copy."""
    L, N, D = X.shape
    buf = torch.empty(L, N, D + int(ones), dtype=dtype, device=X.device)
    Xs = buf[..., :D]
    mean = torch.empty(L, D, dtype=dtype, device=X.device)
    scale = torch.empty(L, D, dtype=dtype, device=X.device)
    for l in range(L):
        x = X[l].to(dtype)
        m = x.mean(0)                                          # cascade sums: accurate, unlike a naive float32 loop
        torch.sub(x, m, out=Xs[l])
        sd = Xs[l].pow(2).mean(0).sqrt()
        sd = torch.where(sd <= 10 * torch.finfo(dtype).eps * m.abs().clamp_min(1), torch.ones_like(sd), sd)
        Xs[l].div_(sd)
        mean[l], scale[l] = m, sd
    if ones:
        buf[..., D] = 1
        return Xs, mean, scale, buf
    return Xs, mean, scale


class TorchProbe(BaseEstimator):
    """Multinomial logistic regression with L2 penalty, all layers fitted as one batched problem.

    C: fixed inverse penalty (a float, or one per layer); None chooses it per
    layer from `Cs` by stratified `cv`-fold cross-validation (accuracy) on the
    training data, folds fixed by `random_state`. The C path is walked in increasing
    order, each step warm-started from the previous one, with every (layer,
    fold) fit of a step in one batch -- the path LogisticRegressionCV walks per
    layer and fold. (At tol 1e-4 a cold start at a weak penalty stops at a
    different, worse point than that path when N < D: the problem is nearly
    separable and flat there.) The chosen C is refitted on all training data
    from the mean of its fold solutions, as LogisticRegressionCV does.
    tol: stop when the largest entry of the gradient of the size-normalised
    objective is <= tol -- scikit-learn's meaning, default 1e-4 as there.
    space: "primal" (weights), "dual" (weights in the span of the training
    rows, one pass over the N x N Gram matrix per iteration), or "auto" (dual
    when N < D). precond_rank: rank of the spectral preconditioner (0: none).
    dtype: of the features and the matmuls; parameters, losses and line
    searches are float64. layer_batch: layers per batch; None: as many as
    keep the batch's standardised copy (and Gram matrix) under
    max_batch_bytes. Layers are independent, so batching changes speed and
    memory only, never the result.

    Attributes after fit: classes_ [K], C_ [L], coef_ [L, D, K] and
    intercept_ [L, K] on standardised features (for K == 2 the class-0 column
    is zero), mean_ / scale_ [L, D], Cs_ (sorted), cv_scores_ [L, cv, n_Cs],
    n_iter_cv_ [L, cv, n_Cs], n_iter_ [L].
    """

    def __init__(self, C=None, Cs=DEFAULT_CS, cv: int = 3, max_iter: int = 1000, tol: float = 1e-4,
                 random_state: int = 0, device: str = "cpu", dtype=torch.float32, space: str = "auto",
                 precond_rank: int = 64, layer_batch: int | None = None, max_batch_bytes: float = 2 ** 31):
        self.C, self.Cs, self.cv, self.max_iter, self.tol = C, Cs, cv, max_iter, tol
        self.random_state, self.device, self.dtype = random_state, device, dtype
        self.space, self.precond_rank = space, precond_rank
        self.layer_batch, self.max_batch_bytes = layer_batch, max_batch_bytes

    def _tensor(self, X):
        return torch.as_tensor(as_layers(X, "X")).to(device=self.device)

    def fit(self, X, y) -> "TorchProbe":
        """Fit on X [L, N, D] or [N, D] and labels y [N]."""
        if self.space not in ("auto", "primal", "dual"):
            raise ValueError(f"space: expected 'auto', 'primal' or 'dual', got {self.space!r}")
        X = self._tensor(X)
        L, N, D = X.shape
        self.classes_, codes = class_codes(y, N)
        dual = self.space == "dual" or (self.space == "auto" and N < D)
        if self.C is None:
            self.Cs_ = sorted_Cs(self.Cs)
            folds = cv_folds(codes, self.cv, self.random_state)
        C = None if self.C is None else C_per_layer(self.C, L)
        per_layer = (N * D + (N * N if dual else N)) * torch.finfo(self.dtype).bits // 8
        step = self.layer_batch or max(1, int(self.max_batch_bytes // per_layer))
        parts = [self._fit_layers(X[s:s + step], codes, dual, folds if C is None else None,
                                  None if C is None else C[s:s + step])
                 for s in range(0, L, step)]
        for name in parts[0]:
            cat = torch.cat if torch.is_tensor(parts[0][name]) else np.concatenate
            setattr(self, name, cat([p[name] for p in parts]))
        return self

    def _fit_layers(self, X, codes, dual, folds, C):
        """Fit the layers of X [L, N, D] as one batch: with folds, cross-validate
        over Cs_ first; else use C [L]. Returns the fitted attributes (per layer)."""
        L, N, D = X.shape
        K = len(self.classes_)
        Kf = K if K > 2 else 1
        out = {}
        Xs, out["mean_"], out["scale_"], *Xa = _standardise(X, self.dtype, ones=not dual)
        del X
        codes_t = torch.as_tensor(codes, device=self.device)
        k = self.precond_rank
        if dual:
            G = gram(Xs)
            spectrum = spectrum_dual(G, D, k, self.random_state) if k else None

            def make(weights, lam):
                return Dual(G, Xs, codes_t, K, weights, lam, spectrum)
        else:
            spectrum = spectrum_primal(Xs, k, self.random_state) if k else None

            def make(weights, lam):
                return Primal(Xa[0], codes_t, K, weights, lam, spectrum)

        R = 2 * N + 1 if dual else D + 1                            # parameters per logit
        if folds is not None:
            theta, ratio = self._cross_validate(make, folds, codes_t, L, Kf, R, out)
            C = out["C_"]
        else:
            out["C_"] = C
            theta, ratio = torch.zeros(L, 1, Kf, R, dtype=torch.float64, device=self.device), None
        full = torch.full((1, 1, N), 1.0 / N, dtype=torch.float64, device=self.device)
        space = make(full, torch.as_tensor(1.0 / (C * N), device=self.device)[:, None])
        theta, it, _ = lbfgs(space, theta, self.tol, self.max_iter, ratio)
        out["n_iter_"] = it[:, 0].cpu().numpy()
        W, b = space.weights(theta, Xs) if dual else space.weights(theta)
        W, b = W[:, 0].transpose(1, 2), b[:, 0]                     # [L, D, Kf], [L, Kf]
        if K == 2:
            W, b = torch.cat([torch.zeros_like(W), W], -1), torch.cat([torch.zeros_like(b), b], -1)
        out["coef_"], out["intercept_"] = W.double().cpu().numpy(), b.double().cpu().numpy()
        return out

    def _cross_validate(self, make, folds, codes_t, L, Kf, R, out):
        """Walk the sorted Cs, all (layer, fold) fits per step in one batch, each
        step warm-started from the last; put cv_scores_, n_iter_cv_, C_ in out.
        Returns the refit's start (mean of the chosen C's fold solutions
        [L, 1, Kf, R]) and its gradient-ratio estimates."""
        N, Cs = len(codes_t), self.Cs_
        F, nC = len(folds), len(Cs)
        w = torch.zeros(F, N, dtype=torch.float64)                  # problem j = fold j
        for i, (tr, _) in enumerate(folds):
            w[i, tr] = 1.0
        w = w.to(self.device)
        sizes = w.sum(1)
        scores = np.empty((L, F, nC))
        out["n_iter_cv_"] = np.empty((L, F, nC), dtype=int)
        theta = torch.zeros(L, F, Kf, R, dtype=torch.float64, device=self.device)
        ratio, fold_means = None, []
        for c, C in enumerate(Cs):
            space = make((w / sizes[:, None])[None], (1.0 / (C * sizes))[None].expand(L, -1))
            theta, it, ratio = lbfgs(space, theta, self.tol, self.max_iter, ratio)
            out["n_iter_cv_"][:, :, c] = it.cpu().numpy()
            z = space.logits(theta)                                 # [L, F, Kf, N]: held-out rows too
            pred = (z[:, :, 0] > 0).long() if Kf == 1 else z.argmax(2)
            for i, (_, va) in enumerate(folds):
                scores[:, i, c] = (pred[:, i, va] == codes_t[va]).double().mean(-1).cpu().numpy()
            fold_means.append(theta.mean(1))                        # [L, Kf, R]
        out["cv_scores_"] = scores
        out["C_"], best = select_C(scores, Cs)
        start = torch.stack(fold_means, 1)[torch.arange(L), torch.as_tensor(best)][:, None]
        return start, ratio.mean(1, keepdim=True)

    def decision_function(self, X) -> np.ndarray:
        """Logits [L, N, K] (float64) of X [L, N, D] or [N, D] (same L and D as in fit)."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("TorchProbe: call fit before predicting")
        X = self._tensor(X).to(self.dtype)
        if X.shape[0] != self.coef_.shape[0] or X.shape[2] != self.coef_.shape[1]:
            raise ValueError(f"X: shape {tuple(X.shape)} does not match the fitted "
                             f"[{self.coef_.shape[0]}, N, {self.coef_.shape[1]}]")
        W = torch.as_tensor(self.coef_, device=self.device, dtype=self.dtype)
        b = torch.as_tensor(self.intercept_, device=self.device, dtype=self.dtype)
        Xs = (X - self.mean_[:, None]) / self.scale_[:, None]
        return torch.baddbmm(b[:, None], Xs, W).double().cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities [L, N, K], columns in the order of classes_."""
        return torch.softmax(torch.as_tensor(self.decision_function(X)), dim=-1).numpy()

    def predict(self, X) -> np.ndarray:
        """Predicted labels [L, N] (values from classes_)."""
        return self.classes_[self.decision_function(X).argmax(-1)]

    def score(self, X, y) -> np.ndarray:
        """Accuracy per layer [L]."""
        return (self.predict(X) == np.asarray(y)[None]).mean(1)
