"""Linear probes: L2-penalised multinomial logistic regression on many layers at once.

`TorchProbe` fits every layer (and, during cross-validation, every fold) as
one batched problem in torch; `SklearnProbe` is the same estimator as a loop of
scikit-learn fits, kept as the reference. Both minimise scikit-learn's
objective, so C means the same thing in both::

    sum_n CE(x_n W + b, y_n) + 1/(2C) ||W||^2        (the intercept b is not penalised)

on features standardised with each layer's training mean and (population) std.
With two classes there is, as in scikit-learn, one logit (class 1 against
class 0): a softmax over two penalised columns would halve the penalty.

Shapes: X is [L, N, D] (L layers or feature sets, N samples, D width) or [N, D]
(one layer); y is [N]; K is the number of classes.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

DEFAULT_CS = tuple(np.logspace(-3, 2, 6))


# ---------------------------------------------------------------- shared helpers

def as_layers(X, name: str = "X"):
    """[N, D] -> [1, N, D]; [L, N, D] unchanged; anything else is an error naming `name`."""
    if X.ndim == 2:
        return X[None]
    if X.ndim != 3:
        raise ValueError(f"{name}: expected shape [L, N, D] or [N, D], got {tuple(X.shape)}")
    return X


def cv_folds(y, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled k-fold split of range(len(y)), fixed by seed: [(train_idx, val_idx)] * cv."""
    y = np.asarray(y)
    counts = np.unique(y, return_counts=True)[1]
    if cv < 2 or counts.min() < cv:
        raise ValueError(f"cv={cv}: need cv >= 2 and at least cv samples in every class "
                         f"(smallest class has {counts.min()})")
    return list(StratifiedKFold(cv, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def select_C(cv_scores: np.ndarray, Cs) -> tuple[np.ndarray, np.ndarray]:
    """Best C per layer from cv_scores [L, n_folds, n_Cs]: highest mean over folds,
    ties to the smaller C (the stronger penalty). Returns (C_ [L], index into Cs [L])."""
    best = np.argmax(cv_scores.mean(axis=1), axis=1)
    return np.asarray(Cs, dtype=float)[best], best


def _labels(y, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes_ [K], integer codes [N]) of labels y [N]; needs K >= 2."""
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"y: {y.shape[0]} labels for {n} samples in X")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y: needs at least 2 classes, got {classes.tolist()}")
    return classes, codes


def _C_per_layer(C, L: int) -> np.ndarray:
    C = np.broadcast_to(np.asarray(C, dtype=float), (L,)).copy()
    if (C <= 0).any():
        raise ValueError(f"C: must be > 0, got {C.tolist()}")
    return C


def _sorted_Cs(Cs) -> np.ndarray:
    Cs = np.sort(np.asarray(Cs, dtype=float).reshape(-1))
    if len(Cs) == 0 or (Cs <= 0).any():
        raise ValueError(f"Cs: needs one or more values > 0, got {Cs.tolist()}")
    return Cs


# ---------------------------------------------------------------- the batched problems
#
# Every (layer l, problem j) pair is one independent logistic regression with
# Kf logits (K, or 1 when K == 2). Its objective is size-normalised, as in
# scikit-learn (same optimum, better conditioning):
#
#     f[l, j] = sum_n w[l, j, n] CE(z[l, j, :, n], y_n) + lam[l, j]/2 ||W||^2
#
# with w = (training mask of the problem) / (its size) and lam = 1/(C size).
# Every problem scores all N samples and w masks them, so one batched matmul
# serves all CV folds. A "space" says how parameter vectors are stored; the
# L-BFGS below only adds them, takes inner products and asks for logits and
# gradients:
#   _Primal: theta [L, J, Kf, D+1] = weights and intercept (features get a
#            column of ones). Two passes over X [L, N, D+1] per iteration.
#   _Dual:   for N < D the weights stay in the span of the training rows,
#            W = X^T alpha, so theta [L, J, Kf, 2N+1] = (alpha, b, G alpha)
#            with G = X X^T. An iteration is one pass over G [L, N, N]; logits
#            come free as G alpha + b. Same iterates as _Primal in exact
#            arithmetic, given the same preconditioner. alpha is defined only
#            up to null(G), which neither W, the logits nor the inner product
#            see: only the preconditioner touches it, and it must map it to 0
#            (_Dual.precond), or it grows without bound and W = X^T alpha, in
#            floating point, is garbage. In float32 the Gram matrix squares
#            the condition number: on features whose standardised covariance
#            spans more than ~1e5 the dual stops short of the optimum (the
#            primal, or float64, does not).

def _vdot(a, b):
    """Per-problem inner product of [L, J, ...] tensors -> [L, J] float64."""
    L, J = a.shape[:2]
    return torch.linalg.vecdot(a.reshape(L, J, -1), b.reshape(L, J, -1)).to(torch.float64)


def _bc(s, like):
    """[L, J] per-problem scalars (or flags) -> broadcastable against [L, J, Kf, P]."""
    s = s[:, :, None, None]
    return s if s.dtype == torch.bool else s.to(like.dtype)


def _take(T, li, ji):
    """T [L, J, ...] -> T[li[a], ji[a, b], ...] of shape [L', J', ...]."""
    return T[li[:, None], ji]


def _bmm_rows(A, B, rows):
    """A [L', m, k] @ B[rows] for B [L, k, n] (any strides): one bmm while every
    layer is in the batch, then one matmul per layer -- B is never copied."""
    if len(rows) == B.shape[0]:
        return torch.bmm(A, B)
    out = torch.empty(A.shape[0], A.shape[1], B.shape[2], dtype=A.dtype, device=A.device)
    for i, r in enumerate(rows.tolist()):
        torch.mm(A[i], B[r], out=out[i])
    return out


class _Space:
    """What both spaces share: labels, sample weights, penalties, the loss."""

    def __init__(self, codes, K, weights, lam, spectrum):
        """codes [N]; weights [L or 1, J, N]; lam [L, J]; spectrum: what
        _spectrum_primal / _spectrum_dual return, or None (no preconditioner)."""
        self.K = K
        self.onehot = torch.nn.functional.one_hot(codes, K).T.to(torch.float64)[None, None]  # [1, 1, K, N]
        self.lam = lam.to(torch.float64)
        self.w = weights.to(torch.float64)[:, :, None].expand(*self.lam.shape, 1, -1)        # [L, J, 1, N]
        self.spectrum = spectrum

    def _take_common(self, sub, li, ji):
        sub.K, sub.onehot = self.K, self.onehot
        sub.w, sub.lam = _take(self.w, li, ji), _take(self.lam, li, ji)
        sub.spectrum = None if self.spectrum is None else tuple(t[li] for t in self.spectrum)
        return sub

    def loss(self, z):
        """From logits z [L, J, Kf, N] (float64): (weighted CE sum [L, J], weighted
        residual dCE/dz [L, J, Kf, N])."""
        if self.K == 2:     # one logit: class 1 against class 0
            y = self.onehot[:, :, 1:]
            ce = torch.nn.functional.softplus(z) - y * z
            resid = torch.sigmoid(z) - y
        else:
            logp = torch.log_softmax(z, dim=2)
            ce = -(logp * self.onehot)
            resid = logp.exp() - self.onehot
        return (ce.sum(2, keepdim=True) * self.w).flatten(2).sum(-1), resid * self.w

    def _multipliers(self, c):
        """Preconditioner weights per problem: top-k [L, J, k] and rest [L, J, 1]
        of M = (c cov + lam)^-1; c = 1/4 bounds the curvature of CE in a logit."""
        ev, rest = self.spectrum[1], self.spectrum[2]
        lam = self.lam[:, :, None]
        return 1.0 / (c * ev[:, None, :] + lam), 1.0 / (c * rest[:, None, None] + lam)


class _Primal(_Space):
    exact_gmax = True            # max|grad| is at hand

    def __init__(self, Xa, codes, K, weights, lam, spectrum=None):
        """Xa [L, N, D+1]: standardised features and a column of ones."""
        super().__init__(codes, K, weights, lam, spectrum)
        self.X, self.D = Xa, Xa.shape[-1] - 1
        self.rows = torch.arange(Xa.shape[0], device=Xa.device)   # layers of X in the batch

    def take(self, li, ji):
        sub = self._take_common(object.__new__(_Primal), li, ji)
        sub.X, sub.D, sub.rows = self.X, self.D, self.rows[li]
        return sub

    def dot(self, a, b):
        return _vdot(a, b)

    def pdot(self, a, b):
        """Inner product of the penalised parts (weights, not intercepts)."""
        return _vdot(a, b) - (a[..., -1] * b[..., -1]).sum(-1).to(torch.float64)

    def logits(self, theta):
        L, J, Kf, P = theta.shape
        th = theta.to(self.X.dtype).reshape(L, J * Kf, P)
        return _bmm_rows(th, self.X.transpose(1, 2), self.rows).reshape(L, J, Kf, -1).double()

    def grad(self, theta, resid):
        L, J, Kf, P = theta.shape
        r = resid.to(self.X.dtype).reshape(L, J * Kf, -1)
        g = _bmm_rows(r, self.X, self.rows).reshape(L, J, Kf, P).double()
        pen = _bc(self.lam, theta) * theta
        pen[..., -1] = 0
        return g + pen

    def precond(self, q, c=0.25):
        """M q, M = (c cov + lam)^-1 from the top-k spectrum (V [L, D, k]), 1/c on intercepts."""
        if self.spectrum is None:
            return q
        V = self.spectrum[0]
        L, J, Kf, P = q.shape
        m_top, m_rest = self._multipliers(c)
        qW = q[..., :-1]
        a = torch.bmm(qW.to(V.dtype).reshape(L, J * Kf, P - 1), V).reshape(L, J, Kf, -1)
        a = (a * (m_top - m_rest)[:, :, None]).to(V.dtype).reshape(L, J * Kf, -1)
        outW = m_rest[..., None] * qW + torch.bmm(a, V.transpose(1, 2)).reshape(qW.shape)
        return torch.cat([outW, q[..., -1:] / c], dim=-1)

    def gmax(self, g, which=None):
        """Largest gradient entry |g| per problem [L, J] (scikit-learn's stopping measure)."""
        return g.abs().flatten(2).amax(-1)

    def weights(self, theta):
        """(W [L, J, Kf, D], b [L, J, Kf])."""
        return theta[..., :-1], theta[..., -1]


class _Dual(_Space):
    exact_gmax = False           # max|grad| of W needs a pass over X

    def __init__(self, G, Xs, codes, K, weights, lam, spectrum=None):
        """G [L, N, N]: Gram matrix of the standardised features Xs [L, N, D];
        spectrum's U [L, N, k] are eigenvectors of G/N, kept with GU = G U."""
        super().__init__(codes, K, weights, lam, spectrum)
        self.G, self.N, self.Xs, self.D = G, G.shape[-1], Xs, Xs.shape[-1]
        self.rows = torch.arange(G.shape[0], device=G.device)      # layers of G and Xs in the batch

    def take(self, li, ji):
        sub = self._take_common(object.__new__(_Dual), li, ji)
        sub.G, sub.N, sub.Xs, sub.D, sub.rows = self.G, self.N, self.Xs, self.D, self.rows[li]
        return sub

    def gmax(self, g, which):
        """Largest entry of the W-space gradient X^T alpha_g (and of the intercept
        gradient) [L, J], for every problem of the layers where `which` [L, J]
        flags one; NaN elsewhere. A pass over X per layer involved, so _lbfgs
        calls it sparingly."""
        N = self.N
        J, Kf = g.shape[1:3]
        out = torch.full(which.shape, float("nan"), dtype=torch.float64, device=g.device)
        for i in which.any(1).nonzero()[:, 0].tolist():
            gW = g[i, :, :, :N].to(self.Xs.dtype).reshape(J * Kf, N) @ self.Xs[self.rows[i]]
            out[i] = torch.maximum(gW.abs().reshape(J, -1).amax(-1).double(), g[i, :, :, N].abs().amax(-1))
        return out

    def pdot(self, a, b):
        N = self.N                                           # alpha_a . G alpha_b = <W_a, W_b>
        return torch.linalg.vecdot(a[..., :N], b[..., N + 1:]).sum(-1)

    def dot(self, a, b):
        N = self.N
        return (torch.linalg.vecdot(a[..., :N], b[..., N + 1:]) + a[..., N] * b[..., N]).sum(-1)

    def logits(self, theta):
        N = self.N
        return theta[..., N + 1:] + theta[..., N:N + 1]

    def grad(self, theta, resid):
        # W-gradient X^T r + lam W = X^T (r + lam alpha); its image G(...) = G r + lam G alpha
        L, J, Kf, _ = theta.shape
        N = self.N
        r = resid.to(self.G.dtype).reshape(L, J * Kf, N)
        Gr = _bmm_rows(r, self.G, self.rows).reshape(L, J, Kf, N).double()
        lam = _bc(self.lam, theta)
        return torch.cat([resid + lam * theta[..., :N], resid.sum(-1, keepdim=True),
                          Gr + lam * theta[..., N + 1:]], dim=-1)

    def _multipliers(self, c):
        """As _Space's, except that directions without variance get 0: the top-k
        ones flagged dead by _spectrum_dual, and the rest when it holds none."""
        ev, rest, live, has_rest = self.spectrum[1], self.spectrum[2], self.spectrum[4], self.spectrum[5]
        lam = self.lam[:, :, None]
        m_top = torch.where(live[:, None, :], 1.0 / (c * ev[:, None, :] + lam), torch.zeros_like(lam))
        m_rest = torch.where(has_rest[:, None, None], 1.0 / (c * rest[:, None, None] + lam), torch.zeros_like(lam))
        return m_top, m_rest

    def precond(self, q, c=0.25):
        """M q with M as in _Primal, acting on alpha with its mean removed:
        m_rest alpha_c + U diag(m_top - m_rest) U^T alpha_c. Why: alpha is defined
        only up to null(G) (W = X^T alpha does not see it), the metric does not
        see it either, so nothing but M bounds alpha there; a multiplier of
        1/lam on it let |alpha| reach ~1e15 within 14 iterations on 24 separable
        samples, and W = X^T alpha in float32 came out ~1e6-1e11 instead of
        ~0.05. So M must map null(G) to 0: the all-ones vector is always in it
        (X is centred), hence the mean removal; directions with no variance
        get multiplier 0 (_multipliers). Without a spectrum, M is the projection
        that removes the mean (the identity on W)."""
        N = self.N
        if self.spectrum is None:
            return torch.cat([q[..., :N] - q[..., :N].mean(-1, keepdim=True), q[..., N:]], dim=-1)
        U, GU = self.spectrum[0], self.spectrum[3]
        L, J, Kf, _ = q.shape
        m_top, m_rest = self._multipliers(c)
        alpha = q[..., :N] - q[..., :N].mean(-1, keepdim=True)
        a = torch.bmm(alpha.to(U.dtype).reshape(L, J * Kf, N), U).reshape(L, J, Kf, -1)
        a = (a * (m_top - m_rest)[:, :, None]).to(U.dtype).reshape(L, J * Kf, -1)
        mr = m_rest[..., None]
        new_alpha = mr * alpha + torch.bmm(a, U.transpose(1, 2)).reshape(alpha.shape)
        new_image = mr * q[..., N + 1:] + torch.bmm(a, GU.transpose(1, 2)).reshape(alpha.shape)
        return torch.cat([new_alpha, q[..., N:N + 1] / c, new_image], dim=-1)

    def weights(self, theta, Xs):
        """(W [L, J, Kf, D], b [L, J, Kf]) from alpha, given the standardised features Xs [L, N, D]."""
        L, J, Kf, _ = theta.shape
        N = self.N
        W = torch.bmm(theta[..., :N].to(Xs.dtype).reshape(L, J * Kf, N), Xs).reshape(L, J, Kf, -1)
        return W, theta[..., N]


def _gram(Xs, block=256):
    """Xs Xs^T [L, N, N] for Xs [L, N, D], computing only the upper block
    triangle (about 60% of the flops of one bmm) and mirroring it."""
    L, N, _ = Xs.shape
    G = torch.empty(L, N, N, dtype=Xs.dtype, device=Xs.device)
    for i in range(0, N, block):
        Gi = torch.bmm(Xs[:, i:i + block], Xs[:, i:].transpose(1, 2))
        G[:, i:i + block, i:] = Gi
        G[:, i + block:, i:i + block] = Gi[:, :, block:].transpose(1, 2)
    return G


def _spectrum_primal(Xs, k, seed, power_iter=2):
    """Top-k covariance spectrum of standardised Xs [L, N, D] by a seeded randomized
    range finder: (V [L, D, k], eigenvalues [L, k], mean eigenvalue of the rest [L])."""
    L, N, D = Xs.shape
    k = min(k, N - 1, D)
    g = torch.Generator(device=Xs.device).manual_seed(seed)
    # one test matrix for every layer, so a layer's fit does not depend on its place in the batch
    omega = torch.randn(1, D, k + 8, generator=g, device=Xs.device, dtype=Xs.dtype).expand(L, -1, -1)
    Q = torch.bmm(Xs, omega)
    Q = torch.linalg.qr(Q)[0]                                          # [L, N, k+8]
    for _ in range(power_iter):
        Q = torch.linalg.qr(torch.bmm(Xs, torch.bmm(Xs.transpose(1, 2), Q)))[0]
    _, s, Vh = torch.linalg.svd(torch.bmm(Q.transpose(1, 2), Xs).double(), full_matrices=False)
    ev = s[:, :k] ** 2 / N
    return Vh[:, :k].transpose(1, 2).to(Xs.dtype).contiguous(), ev, _rest(Xs, ev, N, D, k)


def _spectrum_dual(G, D, k, seed, power_iter=2, rel_tol=None):
    """The same from the Gram matrix G [L, N, N]: (U [L, N, k] eigenvectors of G,
    eigenvalues of G/N [L, k], mean of the rest [L], G U [L, N, k], live [L, k],
    has_rest [L]). When k >= N - 1 every direction fits and the decomposition
    is exact (eigh), with no rest. Eigenvalues <= rel_tol times the largest
    (default 64 eps of G's dtype: the exact null space comes out at ~1e-8 of
    it in float32) are rounding noise: not live; a rest that small is none."""
    L, N, _ = G.shape
    rel_tol = 64 * torch.finfo(G.dtype).eps if rel_tol is None else rel_tol
    trace = torch.diagonal(G, dim1=1, dim2=2).double().sum(-1)
    if min(k, D) >= N - 1:
        ev, U = torch.linalg.eigh(G)
        ev, U = ev.flip(-1).double().clamp_min(0), U.flip(-1).contiguous()
        rest = torch.zeros_like(trace)
    else:
        k = min(k, N - 1, D)
        g = torch.Generator(device=G.device).manual_seed(seed)
        omega = torch.randn(1, N, k + 8, generator=g, device=G.device, dtype=G.dtype).expand(L, -1, -1)
        Q = torch.linalg.qr(torch.bmm(G, omega))[0]
        for _ in range(power_iter):
            Q = torch.linalg.qr(torch.bmm(G, Q))[0]
        ev, Z = torch.linalg.eigh(torch.bmm(Q.transpose(1, 2), torch.bmm(G, Q)).double())
        ev, Z = ev.flip(-1)[:, :k].clamp_min(0), Z.flip(-1)[:, :, :k]
        U = torch.bmm(Q, Z.to(G.dtype))
        rest = (trace - ev.sum(1)).clamp_min(0) / max(min(N - 1, D) - k, 1)
    floor = rel_tol * ev[:, :1]
    live, has_rest = ev > floor, rest > floor[:, 0]
    return U, ev / N, rest / N, torch.bmm(G, U), live, has_rest


def _rest(Xs, ev, N, D, k):
    """Mean of the eigenvalues after the top k: (trace - their sum) / the rank left."""
    trace = torch.stack([x.pow(2).mean(0).sum() for x in Xs]).double()   # one layer at a time
    return (trace - ev.sum(1)).clamp_min(0) / max(min(N - 1, D) - k, 1)


# ---------------------------------------------------------------- batched L-BFGS

def _two_loop(space, g, S, Y, R, gamma):
    """The L-BFGS direction -H g of every problem, H from the pairs (S, Y) with
    1/(s.y) in R (0: pair skipped) and initial inverse Hessian gamma * M."""
    q = -g
    alphas = []
    for s, y, r in zip(reversed(S), reversed(Y), reversed(R)):
        a = r * space.dot(s, q)
        alphas.append(a)
        q = q - _bc(a, q) * y
    d = _bc(gamma, q) * space.precond(q)
    for s, y, r, a in zip(S, Y, R, reversed(alphas)):
        d = d + _bc(a - r * space.dot(y, d), d) * s
    return d


def _line_search(space, z, u, f, gd, resid, w2, wd, dd, active, max_ls, c1=1e-4, c2=0.9):
    """Weak Wolfe step per problem, by doubling then bisection, along logits
    z + t u (float64) with penalty (w2 + 2 t wd + t^2 dd) lam / 2: no matmul.
    gd [L, J]: slope at t = 0. Returns (t [L, J], f(t), residual at t); t = 0
    where no step decreased f (a Wolfe step, else the best decrease found)."""
    t, lo, hi = torch.ones_like(f), torch.zeros_like(f), torch.full_like(f, float("inf"))
    done = ~active
    t_acc, f_acc, r_acc = torch.zeros_like(f), f.clone(), resid.clone()
    for _ in range(max_ls):
        ce_t, res_t = space.loss(torch.addcmul(z, t[:, :, None, None], u))
        f_t = ce_t + 0.5 * space.lam * (w2 + 2 * t * wd + t * t * dd)
        slope = _vdot(res_t, u) + space.lam * (wd + t * dd)
        armijo = f_t <= f + c1 * t * gd
        wolfe = armijo & (slope >= c2 * gd)
        take = ~done & armijo & (wolfe | (f_t < f_acc))
        if take.any():
            t_acc = torch.where(take, t, t_acc)
            f_acc = torch.where(take, f_t, f_acc)
            r_acc = torch.where(take[:, :, None, None], res_t, r_acc)
        done = done | wolfe
        if done.all():
            break
        hi = torch.where(~done & ~armijo, t, hi)
        lo = torch.where(~done & armijo, t, lo)
        t = torch.where(torch.isinf(hi), 2 * t, 0.5 * (lo + hi))
    return t_acc, f_acc, r_acc


def _lbfgs(space, theta, tol, max_iter, ratio=None, history=10, max_ls=30, shrink=0.75):
    """Minimise every (layer, problem) objective of `space` independently.

    One L-BFGS per problem (its own history, curvature scale and step size),
    all evaluated with the same batched matmuls; unlike torch.optim.LBFGS on a
    summed loss, no problem's step or stopping is tied to another's. The
    initial inverse Hessian is the preconditioner M (a top-k spectral model of
    the data covariance) times the usual scale s.y / y.My. The line search
    (weak Wolfe, bisection/doubling) moves along u = logits of the direction,
    so trials cost no matmul and losses are differenced in float64 even for
    float32 features -- which is what lets float32 reach scikit-learn's
    optimum instead of stalling on rounding noise. Converged problems are
    dropped from the batch once it would shrink to `shrink` of its size.

    A problem stops when max|grad| <= tol (scipy's gtol, as scikit-learn uses
    it), when its loss decreases by less than 64 eps relative (scipy's ftol),
    or when no step decreases it. In the dual space max|grad| needs a pass over
    X, so it is computed only when ||grad||_2 times the last measured ratio
    max|grad| / ||grad||_2 says it may be below tol (||grad||_2 <= tol suffices);
    `ratio` [L, J] carries those ratios from a previous call (e.g. the last C).
    theta [L, J, Kf, R] in the space's layout. Returns (theta, n_iter [L, J],
    ratio [L, J]).
    """
    L0, J0 = theta.shape[:2]
    out, n_out = theta.clone(), torch.zeros(L0, J0, dtype=torch.long, device=theta.device)
    rows = torch.arange(L0, device=theta.device)                     # where the batch sits in `out`
    cols = torch.arange(J0, device=theta.device).expand(L0, J0)
    z = space.logits(theta)
    ce, resid = space.loss(z)
    w2 = space.pdot(theta, theta)
    f = ce + 0.5 * space.lam * w2
    g = space.grad(theta, resid)
    # max|g| / ||g||_2, refreshed at each check; by default its lower bound 1/sqrt(#parameters)
    if ratio is None:
        ratio = torch.full_like(f, 1.0 / np.sqrt((space.D + 1) * theta.shape[2]))
    ratio_out = ratio.clone()

    def unconverged(g, active, ratio):
        if space.exact_gmax:
            return active & (space.gmax(g) > tol), ratio
        g2 = space.dot(g, g).sqrt()
        check = active & (g2 > tol) & (ratio * g2 <= tol)
        if check.any():
            gm = space.gmax(g, check)
            seen = ~gm.isnan()
            ratio = torch.where(seen, gm / g2, ratio)
            return active & (g2 > tol) & ~(seen & (gm <= tol)), ratio
        return active & (g2 > tol), ratio

    active, ratio = unconverged(g, torch.ones_like(f, dtype=torch.bool), ratio)
    n_iter = torch.zeros_like(active, dtype=torch.long)
    S, Y, R = [], [], []                                   # rho = 0 marks a skipped pair
    if space.spectrum is None:
        gamma = 1.0 / space.dot(g, g).sqrt().clamp_min(1.0)   # first step: unit length
    else:
        gamma = torch.ones_like(f)                          # M is already an inverse-Hessian guess
    ftol = 64 * np.finfo(np.float64).eps
    for _ in range(max_iter):
        if not active.any():
            break
        counts = active.sum(1)
        keep = (counts > 0).nonzero()[:, 0]
        Jn = int(counts.max())
        if len(keep) * Jn <= shrink * active.numel():      # compact: drop converged problems
            out[rows[:, None], cols] = theta
            n_out[rows[:, None], cols] = n_iter
            ratio_out[rows[:, None], cols] = ratio
            ji = torch.argsort((~active[keep]).to(torch.int8), dim=1, stable=True)[:, :Jn]
            space = space.take(keep, ji)
            rows, cols = rows[keep], _take(cols, keep, ji)
            theta, z, f, g, resid, w2, gamma, active, n_iter, ratio = (
                _take(T, keep, ji) for T in (theta, z, f, g, resid, w2, gamma, active, n_iter, ratio))
            S, Y, R = ([_take(T, keep, ji) for T in H] for H in (S, Y, R))
        d = _two_loop(space, g, S, Y, R, gamma)
        gd = space.dot(g, d)
        bad = gd >= 0                                      # not a descent direction: preconditioned gradient
        if bad.any():
            d = torch.where(_bc(bad, d), -space.precond(g) * _bc(gamma, g), d)
            gd = space.dot(g, d)
        d = d * _bc(active, d)
        gd = gd * active
        u = space.logits(d)
        t_acc, f_acc, r_acc = _line_search(space, z, u, f, gd, resid, w2, space.pdot(theta, d),
                                           space.pdot(d, d), active, max_ls)
        moved = active & (t_acc > 0)
        s = _bc(t_acc, d) * d
        theta = theta + s
        z = torch.addcmul(z, t_acc[:, :, None, None], u)
        w2 = space.pdot(theta, theta)
        new_g = space.grad(theta, r_acc)
        y = new_g - g
        sy = space.dot(s, y)
        yMy = space.dot(y, space.precond(y))
        good = moved & (sy > 1e-10 * yMy)
        R.append(torch.where(good, 1.0 / torch.where(good, sy, torch.ones_like(sy)), torch.zeros_like(sy)))
        S.append(s)
        Y.append(y)
        if len(S) > history:
            del S[0], Y[0], R[0]
        gamma = torch.where(good, sy / yMy.clamp_min(1e-300), gamma)
        n_iter += active.long()
        small = (f - f_acc) <= ftol * torch.maximum(torch.maximum(f.abs(), f_acc.abs()), torch.ones_like(f))
        f, g, resid = f_acc, new_g, r_acc
        active, ratio = unconverged(g, active & moved & ~small, ratio)
    out[rows[:, None], cols] = theta
    n_out[rows[:, None], cols] = n_iter
    ratio_out[rows[:, None], cols] = ratio
    return out, n_out, ratio_out


# ---------------------------------------------------------------- estimators

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
        self.classes_, codes = _labels(y, N)
        dual = self.space == "dual" or (self.space == "auto" and N < D)
        if self.C is None:
            self.Cs_ = _sorted_Cs(self.Cs)
            folds = cv_folds(codes, self.cv, self.random_state)
        C = None if self.C is None else _C_per_layer(self.C, L)
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
            G = _gram(Xs)
            spectrum = _spectrum_dual(G, D, k, self.random_state) if k else None

            def make(weights, lam):
                return _Dual(G, Xs, codes_t, K, weights, lam, spectrum)
        else:
            spectrum = _spectrum_primal(Xs, k, self.random_state) if k else None

            def make(weights, lam):
                return _Primal(Xa[0], codes_t, K, weights, lam, spectrum)

        R = 2 * N + 1 if dual else D + 1                            # parameters per logit
        if folds is not None:
            theta, ratio = self._cross_validate(make, folds, codes_t, L, Kf, R, out)
            C = out["C_"]
        else:
            out["C_"] = C
            theta, ratio = torch.zeros(L, 1, Kf, R, dtype=torch.float64, device=self.device), None
        full = torch.full((1, 1, N), 1.0 / N, dtype=torch.float64, device=self.device)
        space = make(full, torch.as_tensor(1.0 / (C * N), device=self.device)[:, None])
        theta, it, _ = _lbfgs(space, theta, self.tol, self.max_iter, ratio)
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
            theta, it, ratio = _lbfgs(space, theta, self.tol, self.max_iter, ratio)
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
        self.classes_, codes = _labels(y, N)
        K = len(self.classes_)
        self.mean_, self.scale_ = np.empty((L, D)), np.empty((L, D))
        self.coef_, self.intercept_ = np.zeros((L, D, K)), np.zeros((L, K))
        self.Cs_ = Cs = _sorted_Cs(self.Cs)
        folds = cv_folds(codes, self.cv, self.random_state) if self.C is None else []
        self.cv_scores_ = np.empty((L, len(folds), len(Cs)))
        self.n_iter_cv_ = np.zeros((L, len(folds), len(Cs)), dtype=int)
        self.C_ = np.empty(L) if self.C is None else _C_per_layer(self.C, L)
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
