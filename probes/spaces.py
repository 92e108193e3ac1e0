"""The batched logistic-regression problems that TorchProbe solves, and the
spectra of their preconditioners.

Every (layer l, problem j) pair is one independent logistic regression with
Kf logits (K, or 1 when K == 2). Its objective is size-normalised, as in
scikit-learn (same optimum, better conditioning):

    f[l, j] = sum_n w[l, j, n] CE(z[l, j, :, n], y_n) + lam[l, j]/2 ||W||^2

with w = (training mask of the problem) / (its size) and lam = 1/(C size).
Every problem scores all N samples and w masks them, so one batched matmul
serves all CV folds. A "space" says how parameter vectors are stored; the
L-BFGS (probes/lbfgs.py) only adds them, takes inner products and asks for
logits and gradients:
  Primal: theta [L, J, Kf, D+1] = weights and intercept (features get a
          column of ones). Two passes over X [L, N, D+1] per iteration.
  Dual:   for N < D the weights stay in the span of the training rows,
          W = X^T alpha, so theta [L, J, Kf, 2N+1] = (alpha, b, G alpha)
          with G = X X^T. An iteration is one pass over G [L, N, N]; logits
          come free as G alpha + b. Same iterates as Primal in exact
          arithmetic, given the same preconditioner. alpha is defined only
          up to null(G), which neither W, the logits nor the inner product
          see: only the preconditioner touches it, and it must map it to 0
          (Dual.precond), or it grows without bound and W = X^T alpha, in
          floating point, is garbage. In float32 the Gram matrix squares
          the condition number: on features whose standardised covariance
          spans more than ~1e5 the dual stops short of the optimum (the
          primal, or float64, does not).
"""

from __future__ import annotations

import torch


def vdot(a, b):
    """Per-problem inner product of [L, J, ...] tensors -> [L, J] float64."""
    L, J = a.shape[:2]
    return torch.linalg.vecdot(a.reshape(L, J, -1), b.reshape(L, J, -1)).to(torch.float64)


def bcast(s, like):
    """[L, J] per-problem scalars (or flags) -> broadcastable against [L, J, Kf, P]."""
    s = s[:, :, None, None]
    return s if s.dtype == torch.bool else s.to(like.dtype)


def take(T, li, ji):
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
        spectrum_primal / spectrum_dual return, or None (no preconditioner)."""
        self.K = K
        self.onehot = torch.nn.functional.one_hot(codes, K).T.to(torch.float64)[None, None]  # [1, 1, K, N]
        self.lam = lam.to(torch.float64)
        self.w = weights.to(torch.float64)[:, :, None].expand(*self.lam.shape, 1, -1)        # [L, J, 1, N]
        self.spectrum = spectrum

    def _take_common(self, sub, li, ji):
        sub.K, sub.onehot = self.K, self.onehot
        sub.w, sub.lam = take(self.w, li, ji), take(self.lam, li, ji)
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


class Primal(_Space):
    exact_gmax = True            # max|grad| is at hand

    def __init__(self, Xa, codes, K, weights, lam, spectrum=None):
        """Xa [L, N, D+1]: standardised features and a column of ones."""
        super().__init__(codes, K, weights, lam, spectrum)
        self.X, self.D = Xa, Xa.shape[-1] - 1
        self.rows = torch.arange(Xa.shape[0], device=Xa.device)   # layers of X in the batch

    def take(self, li, ji):
        sub = self._take_common(object.__new__(Primal), li, ji)
        sub.X, sub.D, sub.rows = self.X, self.D, self.rows[li]
        return sub

    def dot(self, a, b):
        return vdot(a, b)

    def pdot(self, a, b):
        """Inner product of the penalised parts (weights, not intercepts)."""
        return vdot(a, b) - (a[..., -1] * b[..., -1]).sum(-1).to(torch.float64)

    def logits(self, theta):
        L, J, Kf, P = theta.shape
        th = theta.to(self.X.dtype).reshape(L, J * Kf, P)
        return _bmm_rows(th, self.X.transpose(1, 2), self.rows).reshape(L, J, Kf, -1).double()

    def grad(self, theta, resid):
        L, J, Kf, P = theta.shape
        r = resid.to(self.X.dtype).reshape(L, J * Kf, -1)
        g = _bmm_rows(r, self.X, self.rows).reshape(L, J, Kf, P).double()
        pen = bcast(self.lam, theta) * theta
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


class Dual(_Space):
    exact_gmax = False           # max|grad| of W needs a pass over X

    def __init__(self, G, Xs, codes, K, weights, lam, spectrum=None):
        """G [L, N, N]: Gram matrix of the standardised features Xs [L, N, D];
        spectrum's U [L, N, k] are eigenvectors of G/N, kept with GU = G U."""
        super().__init__(codes, K, weights, lam, spectrum)
        self.G, self.N, self.Xs, self.D = G, G.shape[-1], Xs, Xs.shape[-1]
        self.rows = torch.arange(G.shape[0], device=G.device)      # layers of G and Xs in the batch

    def take(self, li, ji):
        sub = self._take_common(object.__new__(Dual), li, ji)
        sub.G, sub.N, sub.Xs, sub.D, sub.rows = self.G, self.N, self.Xs, self.D, self.rows[li]
        return sub

    def gmax(self, g, which):
        """Largest entry of the W-space gradient X^T alpha_g (and of the intercept
        gradient) [L, J], for every problem of the layers where `which` [L, J]
        flags one; NaN elsewhere. A pass over X per layer involved, so lbfgs
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
        lam = bcast(self.lam, theta)
        return torch.cat([resid + lam * theta[..., :N], resid.sum(-1, keepdim=True),
                          Gr + lam * theta[..., N + 1:]], dim=-1)

    def _multipliers(self, c):
        """As _Space's, except that directions without variance get 0: the top-k
        ones flagged dead by spectrum_dual, and the rest when it holds none."""
        ev, rest, live, has_rest = self.spectrum[1], self.spectrum[2], self.spectrum[4], self.spectrum[5]
        lam = self.lam[:, :, None]
        m_top = torch.where(live[:, None, :], 1.0 / (c * ev[:, None, :] + lam), torch.zeros_like(lam))
        m_rest = torch.where(has_rest[:, None, None], 1.0 / (c * rest[:, None, None] + lam), torch.zeros_like(lam))
        return m_top, m_rest

    def precond(self, q, c=0.25):
        """M q with M as in Primal, acting on alpha with its mean removed:
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


def gram(Xs, block=256):
    """Xs Xs^T [L, N, N] for Xs [L, N, D], computing only the upper block
    triangle (about 60% of the flops of one bmm) and mirroring it."""
    L, N, _ = Xs.shape
    G = torch.empty(L, N, N, dtype=Xs.dtype, device=Xs.device)
    for i in range(0, N, block):
        Gi = torch.bmm(Xs[:, i:i + block], Xs[:, i:].transpose(1, 2))
        G[:, i:i + block, i:] = Gi
        G[:, i + block:, i:i + block] = Gi[:, :, block:].transpose(1, 2)
    return G


def spectrum_primal(Xs, k, seed, power_iter=2):
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


def spectrum_dual(G, D, k, seed, power_iter=2, rel_tol=None):
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
