"""What a store file is, as the store compares it with a run: the JSON form of
stored values, a run's identity, the samples of either schema, and the lines
that say how two identities differ (tracing/store.py writes and reads files).

Schema 2 names each sample's ground truth ``/samples/gold`` and the model's
prediction ``/samples/predicted``. Schema 1 (files written before) named them
``label`` and ``answer``; they are read as gold and predicted, and an old file
and a new run of the same configuration are the same run (it resumes). The
prediction is an output, never part of the identity: the run engine fills it
per unit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SCHEMA = 2
COMPATIBLE = (1, 2)  # schemas a run of this SCHEMA resumes and CacheReader reads
OUTPUTS = ("predicted",)  # per-sample fields that are results, not identity


# ---------------------------------------------------------------- JSON helpers

def _plain(x):
    """json.dumps fallback: numpy scalars/arrays, paths, tuples -> JSON types."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot store {type(x).__name__} {x!r} as JSON")


def _dumps(x) -> str:
    return json.dumps(x, sort_keys=True, default=_plain)


def _norm(x):
    """The value as it reads back from the file (tuples become lists, ...)."""
    return json.loads(_dumps(x))


def _flat(d, prefix):
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}, so a mismatch names the leaf key."""
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}"))
    return out if out else {prefix: d}


def plain_attr(v):
    """An HDF5 attribute as a plain Python value: str (never bytes), int, float, bool."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        v = v.item()
        return v.decode() if isinstance(v, bytes) else v
    return v


# ---------------------------------------------------------------- identity

def _identity(kind, model, fingerprint, dataset, config, samples, hooks=None, float16=False):
    """What a run writes into a new file; all of it but OUTPUTS must agree with
    a file that the run wants to resume."""
    ident = {
        "kind": kind, "model": str(model), "model_fingerprint": str(fingerprint),
        "dataset": str(dataset), "config": _norm(config), "schema": SCHEMA,
        "samples": [_norm({"id": s.id, "task": s.task, "gold": int(s.gold), "predicted": int(s.predicted),
                           "meta": s.meta}) for s in samples],
    }
    if kind == "cache":
        ident["float16"] = bool(float16)
        ident["hooks"] = None if hooks is None else _hook_spec(hooks, float16)
    return ident


def _hook_spec(hooks, float16):
    """{name: (max_shape, dtype)} -> {name: [max_shape list, stored dtype name]}."""
    spec = {}
    for name, (shape, dtype) in hooks.items():
        if not name or "/" in name:
            raise ValueError(f"hook name {name!r}: must be non-empty and contain no '/'")
        dt = np.dtype(dtype)
        if float16 and dt.kind == "f":
            dt = np.dtype("float16")
        spec[name] = [[int(d) for d in shape], dt.name]
    return spec


def sample_arrays(f) -> dict[str, np.ndarray]:
    """{'id', 'task': str [n]; 'gold', 'predicted': int64 [n]} of an open file
    of either schema. Schema 1's ``answer`` is the prediction, except in T3
    files, which stored the gold label there: their prediction reads as -1."""
    s = f["samples"]
    out = {"id": s["id"].asstr()[()].astype(str), "task": s["task"].asstr()[()].astype(str)}
    if "gold" in s:
        out["gold"], out["predicted"] = s["gold"][()], s["predicted"][()]
    else:
        out["gold"], out["predicted"] = s["label"][()], s["answer"][()]
        if json.loads(f.attrs["config"]).get("analysis") == "t3":
            out["predicted"] = np.full_like(out["predicted"], -1)
    return out


def file_identity(f) -> dict:
    """The identity of an open chronolens file (see ``_identity``); a schema
    this code resumes counts as the current one."""
    a = f.attrs
    s = sample_arrays(f)
    metas = f["samples"]["meta"].asstr()[()]
    schema = int(a["schema"])
    ident = {
        "kind": str(a["kind"]), "model": str(a["model"]),
        "model_fingerprint": str(a["model_fingerprint"]), "dataset": str(a["dataset"]),
        "config": json.loads(a["config"]), "schema": SCHEMA if schema in COMPATIBLE else schema,
        "samples": [{"id": str(i), "task": str(t), "gold": int(g), "predicted": int(p), "meta": json.loads(m)}
                    for i, t, g, p, m in zip(s["id"], s["task"], s["gold"], s["predicted"], metas)],
    }
    if ident["kind"] == "cache":
        ident["float16"] = bool(a["float16"])
        ident["hooks"] = json.loads(a["hooks"])
    return ident


def diff_lines(old: dict, new: dict, prefix: str) -> list[str]:
    """'key.leaf: <old> (in file) vs <new> (this run)' for every leaf that differs."""
    fo, fn = _flat(old, prefix), _flat(new, prefix)
    return [f"{k}: {fo.get(k, '<absent>')!r} (in file) vs {fn.get(k, '<absent>')!r} (this run)"
            for k in sorted(set(fo) | set(fn)) if fo.get(k, "<absent>") != fn.get(k, "<absent>")]


def _inputs(samples):
    return [{k: v for k, v in x.items() if k not in OUTPUTS} for x in samples]


def _differences(old, new):
    """Lines 'key: <file value> (in file) vs <run value> (this run)'."""
    lines = []
    for key in new:
        o, n = old.get(key), new[key]
        if key == "hooks" and (o is None or n is None):
            continue  # not yet defined on one side: the other side defines them
        if key == "config":
            lines += diff_lines(o, n, "config")
        elif key == "samples":
            o, n = _inputs(o), _inputs(n)
            if len(o) != len(n):
                lines.append(f"samples: {len(o)} (in file) vs {len(n)} (this run)")
            elif o != n:
                i = next(i for i in range(len(o)) if o[i] != n[i])
                lines.append(f"samples[{i}]: {o[i]!r} (in file) vs {n[i]!r} (this run)")
        elif o != n:
            lines.append(f"{key}: {o!r} (in file) vs {n!r} (this run)")
    return lines
