"""Batched L-BFGS: one independent L-BFGS per (layer, problem) of a space
(probes/spaces.py), all evaluated with the same batched matmuls."""

from __future__ import annotations

import numpy as np
import torch

from probes.spaces import bcast, take, vdot


def _two_loop(space, g, S, Y, R, gamma):
    """The L-BFGS direction -H g of every problem, H from the pairs (S, Y) with
    1/(s.y) in R (0: pair skipped) and initial inverse Hessian gamma * M."""
    q = -g
    alphas = []
    for s, y, r in zip(reversed(S), reversed(Y), reversed(R)):
        a = r * space.dot(s, q)
        alphas.append(a)
        q = q - bcast(a, q) * y
    d = bcast(gamma, q) * space.precond(q)
    for s, y, r, a in zip(S, Y, R, reversed(alphas)):
        d = d + bcast(a - r * space.dot(y, d), d) * s
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
        slope = vdot(res_t, u) + space.lam * (wd + t * dd)
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


def lbfgs(space, theta, tol, max_iter, ratio=None, history=10, max_ls=30, shrink=0.75):
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
            rows, cols = rows[keep], take(cols, keep, ji)
            theta, z, f, g, resid, w2, gamma, active, n_iter, ratio = (
                take(T, keep, ji) for T in (theta, z, f, g, resid, w2, gamma, active, n_iter, ratio))
            S, Y, R = ([take(T, keep, ji) for T in H] for H in (S, Y, R))
        d = _two_loop(space, g, S, Y, R, gamma)
        gd = space.dot(g, d)
        bad = gd >= 0                                      # not a descent direction: preconditioned gradient
        if bad.any():
            d = torch.where(bcast(bad, d), -space.precond(g) * bcast(gamma, g), d)
            gd = space.dot(g, d)
        d = d * bcast(active, d)
        gd = gd * active
        u = space.logits(d)
        t_acc, f_acc, r_acc = _line_search(space, z, u, f, gd, resid, w2, space.pdot(theta, d),
                                           space.pdot(d, d), active, max_ls)
        moved = active & (t_acc > 0)
        s = bcast(t_acc, d) * d
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
