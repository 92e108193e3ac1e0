"""Video files <-> uint8 frame arrays, with PyAV.

Frames are sampled uniformly as TOMATO does: `np.linspace(0, n_total - 1, n,
dtype=int)` over the decoded frames. Every failure (missing, empty, corrupt,
truncated, frameless, too short, an index out of range) is a `VideoError`
naming the file.

    load_frames(path, n)           n frames sampled uniformly (or every frame)
    load_frames_at(path, indices)  the frames at given indices, decoding no further
                                   than the last of them
    sampled_fps(path, n)           frames kept per second of video (Qwen2.5-VL's time positions)
    duration(path)                 seconds of video the container declares
    count_frames(path)             how many frames decode (complete=True: and that none is missing)
    check_decoded(path, d, n)      the shared check: VideoError when fewer decode than declared
"""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np


class VideoError(ValueError):
    """A video that cannot be read as asked; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def sample_indices(n_total: int, n: int) -> np.ndarray:
    """n frame indices spread uniformly over n_total frames (repeats when n > n_total) -> int [n]."""
    if n_total < 1:
        raise ValueError(f"n_total must be >= 1, got {n_total}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return np.linspace(0, n_total - 1, n, dtype=int)


def _decode(path: Path, keep: set[int] | None, size: int | None,
            stop: int | None = None) -> tuple[int, dict[int, np.ndarray]]:
    """Decode the first video stream; return (frames decoded, {index: RGB array} for indices in keep).

    keep None keeps every frame. stop: stop once frame ``stop`` is decoded (the count is then
    stop + 1 and says nothing of the frames after it).
    """
    kept: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if keep is None or count in keep:
                    if size is not None:
                        frame = frame.reformat(width=size, height=size, format="rgb24")
                    kept[count] = frame.to_ndarray(format="rgb24")
                count += 1
                if stop is not None and count > stop:
                    break
    except VideoError:
        raise
    except (av.FFmpegError, OSError, EOFError) as e:
        # PyAV raises InvalidDataError for garbage, and for an mp4 cut short (its index is lost).
        raise VideoError(path, f"cannot be decoded ({type(e).__name__}: {e})") from e
    return count, kept


def _header(path: Path) -> tuple[int, float]:
    """(frame count the container declares or 0 when unknown, average fps or 0); errors are VideoError."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return int(stream.frames or 0), float(rate) if rate else 0.0
    except VideoError:
        raise
    except (av.FFmpegError, OSError, EOFError) as e:
        raise VideoError(path, f"cannot be opened as a video ({type(e).__name__}: {e})") from e


def check_decoded(path: str | os.PathLike, declared: int, decoded: int) -> None:
    """The decode check every reader of a whole video makes (``load_frames``,
    ``count_frames(complete=True)``, hence flow, capture, the benchmark loaders
    and TOMATO's frame conditions): VideoError when no frame decodes, or when
    the container declares more frames than decode (a truncated or corrupt
    file). ``declared`` 0 (unknown) or below ``decoded`` is fine."""
    if decoded == 0:
        raise VideoError(path, "contains no decodable frames")
    if declared > 0 and decoded < declared:
        raise VideoError(path, f"is truncated or corrupt: the container declares {declared} frames "
                               f"but only {decoded} decode")


def count_frames(path: str | os.PathLike, complete: bool = False) -> int:
    """The number of frames that actually decode (the container's own count is not trusted).
    complete: also apply ``check_decoded`` (VideoError for a truncated file or one without frames)."""
    p = _check_file(path)
    n, _ = _decode(p, keep=set(), size=None)
    if complete:
        check_decoded(p, _header(p)[0], n)
    return n


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoError(p, "file does not exist")
    if not p.is_file():
        raise VideoError(p, "is not a file")
    if p.stat().st_size == 0:
        raise VideoError(p, "file is empty (0 bytes)")
    return p


def load_frames(path: str | os.PathLike, n_frames: int | None = None, size: int | None = None,
                strict: bool = False, bound: tuple[float, float] | None = None,
                info: dict | None = None) -> np.ndarray:
    """Decode a video into uint8 RGB frames [T, H, W, 3].

    n_frames: None keeps every frame (T = frames in the file); otherwise T = n_frames
              sampled with `sample_indices` (indices repeat when the video is shorter,
              unless strict, which then raises VideoError).
    size:     None keeps the file's resolution; otherwise every frame is resized to
              size x size.
    bound:    (start, end) in seconds: sample only frames round(start*fps)..round(end*fps)
              (the clip a TVBench question is about).
    info:     a dict to fill with ``distinct``, the number of different frames
              sampled (fewer than n_frames when frames repeat).
    A file that the container says has N frames but decodes to fewer is treated as
    truncated and raises VideoError.
    """
    p = _check_file(path)
    if n_frames is not None and n_frames < 1:
        raise ValueError(f"n_frames must be >= 1 or None, got {n_frames} (file {p})")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1 or None, got {size} (file {p})")
    declared, fps = _header(p)
    if n_frames is None and bound is None:
        total, kept = _decode(p, None, size)
        idx = np.arange(total)
    else:
        # One pass when the declared count is right; a second when it is absent.
        total = declared if declared > 0 else _decode(p, set(), None)[0]
        idx = _indices(p, total, n_frames, bound, fps)
        decoded, kept = _decode(p, set(idx.tolist()), size)
        if decoded > total:  # the container under-declared: resample over what is really there
            total = decoded
            idx = _indices(p, total, n_frames, bound, fps)
            _, kept = _decode(p, set(idx.tolist()), size)
        total = min(total, decoded)
    check_decoded(p, declared, total)
    if n_frames is not None and strict and len(set(idx.tolist())) < n_frames:
        raise VideoError(p, f"has {len(set(idx.tolist()))} frames in range, fewer than the {n_frames} "
                            f"requested (strict)")
    if info is not None:
        info["distinct"] = len(set(idx.tolist()))
    return np.stack([kept[int(i)] for i in idx]).astype(np.uint8, copy=False)


def duration(path: str | os.PathLike) -> float | None:
    """Seconds of video the container declares (frames / frame rate), or None when it declares neither."""
    declared, fps = _header(_check_file(path))
    return declared / fps if declared > 0 and fps > 0 else None


def sampled_fps(path: str | os.PathLike, n_kept: int, bound: tuple[float, float] | None = None) -> float | None:
    """Frames kept per second of video: ``n_kept`` over the seconds they were sampled
    from (the clip ``bound`` or the whole file), as Hugging Face's ``VideoMetadata.sampled_fps``.
    None when the container declares no frame count or rate."""
    seconds = bound[1] - bound[0] if bound is not None else duration(path)
    return n_kept / seconds if seconds else None


def load_frames_at(path: str | os.PathLike, indices, size: int | None = None) -> np.ndarray:
    """Decode the frames at given indices: uint8 RGB [len(indices), H, W, 3], in the order of
    ``indices`` (any order; an index may repeat).

    Decoding stops at the last index asked for, so a frame near the start of a long
    video costs only the frames before it; damage after that frame goes unnoticed.
    indices: ints into the frames as they decode, from 0 (``count_frames`` says how
             many there are; ``sample_indices`` spreads n of them uniformly).
    size:    None keeps the file's resolution; otherwise frames are resized to size x size.
    Raises VideoError naming the file when it is missing, empty or undecodable, when the
    container declares more frames than decode before the last index asked for
    (truncated), or when an index is out of range; ValueError for an empty or
    non-integer ``indices``.
    """
    p = _check_file(path)
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D sequence of frame indices, got shape {idx.shape} "
                         f"(file {p})")
    if idx.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {idx.dtype} (file {p})")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1 or None, got {size} (file {p})")
    if idx.min() < 0:
        raise VideoError(p, f"frame index {int(idx.min())} is out of range (frames are numbered from 0)")
    last = int(idx.max())
    declared, _ = _header(p)
    decoded, kept = _decode(p, {int(i) for i in idx}, size, stop=last)
    if decoded == 0:
        raise VideoError(p, "contains no decodable frames")
    if decoded <= last:
        check_decoded(p, declared, decoded)  # decoding stopped early only if frames are missing
        raise VideoError(p, f"frame index {last} is out of range: the video has {decoded} frames")
    return np.stack([kept[int(i)] for i in idx]).astype(np.uint8, copy=False)


def _indices(p: Path, total: int, n: int | None, bound: tuple[float, float] | None, fps: float) -> np.ndarray:
    """Frame indices to keep: n spread over [0, total) or over the bound's frames (all when n is None)."""
    if total == 0:
        return np.zeros(0, dtype=int)
    lo, hi = 0, total - 1
    if bound is not None:
        if fps <= 0:
            raise VideoError(p, "has no frame rate, so a time bound cannot be applied")
        lo, hi = max(0, round(bound[0] * fps)), min(total - 1, round(bound[1] * fps))
        if hi < lo:
            raise VideoError(p, f"bound {bound} s selects no frames (video has {total} frames at {fps:g} fps)")
    if n is None:
        return np.arange(lo, hi + 1)
    return lo + sample_indices(hi - lo + 1, n)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, codec: str = "libx264") -> Path:
    """Write uint8 RGB frames [T, H, W, 3] to a video file (mp4 by extension).

    libx264 is used near-losslessly (crf 0, 4:4:4 chroma) so that small synthetic
    frames keep their colours; any size works, odd ones included.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be [T>=1, H, W, 3], got shape {frames.shape} (writing {path})")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype} (writing {path})")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    T, H, W, _ = frames.shape
    with av.open(str(p), mode="w") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.width, stream.height = W, H
        if codec == "libx264":
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": "0", "preset": "ultrafast"}
        else:
            if H % 2 or W % 2:
                raise ValueError(f"codec {codec} needs even frame sizes, got {W}x{H} (writing {path})")
            stream.pix_fmt = "yuv420p"
        for t in range(T):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[t]), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return p
