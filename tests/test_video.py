"""Video decoding with PyAV: sampling, round trips, and every way a file can be bad."""
from __future__ import annotations

import av
import numpy as np
import pytest

from tasks.synthetic import render
from tasks.video import VideoError, count_frames, load_frames, load_frames_at, sample_indices, write_video


def level_video(path, n: int, fps: int = 8, size: int = 16):
    """Frame t (< 21) is a flat grey of level 10 + 12 t, so a decoded frame names its own index."""
    frames = np.stack([np.full((size, size, 3), 10 + 12 * t, dtype=np.uint8) for t in range(n)])
    write_video(path, frames, fps=fps)
    return frames


def frame_ids(frames: np.ndarray) -> list[int]:
    return [int(round((f.astype(float).mean() - 10) / 12)) for f in frames]


def test_sample_indices_by_hand():
    assert sample_indices(10, 4).tolist() == [0, 3, 6, 9]  # linspace 0, 3, 6, 9
    # linspace(0, 4, 8) = 0, .57, 1.14, 1.71, 2.29, 2.86, 3.43, 4 -> truncated
    assert sample_indices(5, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    assert sample_indices(300, 1).tolist() == [0]
    assert sample_indices(7, 7).tolist() == list(range(7))
    with pytest.raises(ValueError):
        sample_indices(0, 4)


def test_round_trip_keeps_pixels(tmp_path):
    smp = render("order3", 4, n_frames=10)
    p = write_video(tmp_path / "a.mp4", smp.frames)
    out = load_frames(p)
    assert out.dtype == np.uint8 and out.shape == (10, 32, 32, 3)
    # libx264 at crf 0 with 4:4:4 chroma: only colour-conversion rounding remains.
    assert np.abs(out.astype(int) - smp.frames).max() <= 3
    assert count_frames(p) == 10


def test_uniform_sampling_picks_linspace_frames(tmp_path):
    p = tmp_path / "levels.mp4"
    level_video(p, 12)
    assert frame_ids(load_frames(p, 4)) == [0, 3, 7, 11]  # linspace(0, 11, 4) = 0, 3.67, 7.33, 11
    # More frames than the video has: indices repeat (TOMATO's behaviour) unless strict.
    assert frame_ids(load_frames(p, 16)) == np.linspace(0, 11, 16, dtype=int).tolist()
    with pytest.raises(VideoError, match="levels.mp4"):
        load_frames(p, 16, strict=True)
    assert load_frames(p, 12, strict=True).shape[0] == 12


def test_resize_and_odd_sizes(tmp_path):
    smp = render("direction", 1, size=33, n_frames=5)
    p = write_video(tmp_path / "odd.mp4", smp.frames)
    assert load_frames(p).shape == (5, 33, 33, 3)
    assert load_frames(p, 3, size=20).shape == (3, 20, 20, 3)


def test_time_bound_selects_frames(tmp_path):
    p = tmp_path / "b.mp4"
    level_video(p, 16, fps=8)
    # 0.5 s .. 1.0 s at 8 fps = frames 4..8; 3 frames over them: 4 + linspace(0, 4, 3) = 4, 6, 8.
    assert frame_ids(load_frames(p, 3, bound=(0.5, 1.0))) == [4, 6, 8]
    with pytest.raises(VideoError, match="b.mp4"):
        load_frames(p, 3, bound=(5.0, 6.0))


def test_missing_file(tmp_path):
    p = tmp_path / "nothere.mp4"
    with pytest.raises(VideoError, match="nothere.mp4.*does not exist") as e:
        load_frames(p, 4)
    assert isinstance(e.value, ValueError) and e.value.path == str(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4.*empty"):
        load_frames(p, 4)


def test_corrupt_bytes(tmp_path):
    p = tmp_path / "junk.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="junk.mp4"):
        load_frames(p, 4)


def test_truncated_mp4(tmp_path):
    good = tmp_path / "good.mp4"
    level_video(good, 20, size=32)
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut.mp4"):
        load_frames(cut, 4)


def test_truncated_mp4_with_index_first(tmp_path):
    # With the index (moov) written first, half a file still opens; decoding must fail, not return garbage.
    p = faststart_video(tmp_path / "fast.mp4", 40, codec="libx264")
    assert load_frames(p).shape[0] == 40
    data = p.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="fast_cut.mp4"):
        load_frames(cut, 8)


def test_zero_decodable_frames(tmp_path):
    p = tmp_path / "zero.avi"
    with av.open(str(p), "w") as c:  # a video stream that never receives a frame
        st = c.add_stream("mpeg4", rate=8)
        st.width = st.height = 32
        st.pix_fmt = "yuv420p"
        c.start_encoding()
    assert p.stat().st_size > 0
    with pytest.raises(VideoError, match="zero.avi.*no decodable frames"):
        load_frames(p, 4)


def test_write_video_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8, 3), np.float32))


# ---------------------------------------------------------------- frames at given indices
def faststart_video(path, n: int, codec: str = "mpeg4"):
    """Frame t a grey of level 10 + 12 (t % 20) with its index moved to the file's start
    (faststart), so that a copy cut short still opens and decodes its first frames."""
    frames = np.stack([np.full((32, 32, 3), 10 + 12 * (t % 20), dtype=np.uint8) for t in range(n)])
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        st = c.add_stream(codec, rate=8)
        st.width = st.height = 32
        st.pix_fmt = "yuv420p"
        for f in frames:
            for pk in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pk)
        for pk in st.encode():
            c.mux(pk)
    return path


def test_load_frames_at_equals_uniform_sampling_and_keeps_the_order_asked(tmp_path):
    p = tmp_path / "levels.mp4"
    level_video(p, 20)
    every = load_frames(p)
    for n in (1, 4, 8, 16, 20, 30):  # 30 > 20: repeated indices, as load_frames repeats them
        np.testing.assert_array_equal(load_frames_at(p, sample_indices(20, n)), load_frames(p, n), err_msg=str(n))
    got = load_frames_at(p, [13, 2, 13, 0, 19])
    assert got.dtype == np.uint8 and got.shape == (5, 16, 16, 3)
    assert frame_ids(got) == [13, 2, 13, 0, 19]
    np.testing.assert_array_equal(got, every[[13, 2, 13, 0, 19]])
    np.testing.assert_array_equal(load_frames_at(p, np.array([7], dtype=np.uint8)), every[7:8])
    np.testing.assert_array_equal(load_frames_at(p, sample_indices(20, 4), size=8), load_frames(p, 4, size=8))


def test_load_frames_at_decodes_no_further_than_the_last_index(tmp_path):
    good = faststart_video(tmp_path / "long.mp4", 40)
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.8)])  # the index survives; the last frames' data do not
    assert frame_ids(load_frames_at(cut, [2, 0, 1])) == [2, 0, 1]  # the damage lies past frame 2
    np.testing.assert_array_equal(load_frames_at(cut, [0, 1, 2]), load_frames_at(good, [0, 1, 2]))
    with pytest.raises(VideoError, match=r"cut.mp4: is truncated or corrupt: the container declares 40 frames "
                                         r"but only \d+ decode"):
        load_frames_at(cut, [0, 39])
    with pytest.raises(VideoError, match="cut.mp4: is truncated"):
        load_frames(cut, 8)  # sampling uniformly needs the last frame


def test_load_frames_at_errors_name_the_file(tmp_path):
    p = tmp_path / "twelve.mp4"
    level_video(p, 12)
    with pytest.raises(VideoError, match=r"twelve.mp4: frame index 12 is out of range: the video has 12 frames") as e:
        load_frames_at(p, [3, 12])
    assert e.value.path == str(p)
    with pytest.raises(VideoError, match=r"twelve.mp4: frame index -1 is out of range"):
        load_frames_at(p, [0, -1])
    with pytest.raises(ValueError, match="twelve.mp4"):
        load_frames_at(p, [])
    with pytest.raises(ValueError, match="integers.*twelve.mp4"):
        load_frames_at(p, [1.5])
    with pytest.raises(VideoError, match="nothere.mp4.*does not exist"):
        load_frames_at(tmp_path / "nothere.mp4", [0])
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4.*empty"):
        load_frames_at(tmp_path / "empty.mp4", [0])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="junk.mp4"):
        load_frames_at(junk, [0])
    good = tmp_path / "good.mp4"
    level_video(good, 20, size=32)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # index at the end: lost
    with pytest.raises(VideoError, match="cut.mp4"):
        load_frames_at(cut, [0])
    zero = tmp_path / "zero.avi"
    with av.open(str(zero), "w") as c:
        st = c.add_stream("mpeg4", rate=8)
        st.width = st.height = 32
        st.pix_fmt = "yuv420p"
        c.start_encoding()
    with pytest.raises(VideoError, match="zero.avi.*no decodable frames"):
        load_frames_at(zero, [0])
