"""Frames -> an animation: animated WebP and GIF with Pillow, MP4 (H.264) with PyAV, whose
wheels ship FFmpeg. Torch-free: the API builds animations of finished morph jobs."""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction

from PIL import Image

FORMATS = {"webp": "image/webp", "gif": "image/gif", "mp4": "video/mp4"}


def frame_order(count: int, bounce: bool) -> list[int]:
    """Frame indices played: forward, then (bounce) back without repeating either end."""
    forward = list(range(count))
    return forward + forward[-2:0:-1] if bounce else forward


def encode_animation(
    frames: Sequence[Image.Image], fmt: str, *, fps: float, loop: bool, bounce: bool
) -> bytes:
    """The frames (all one size) as an animation in `fmt` (webp, gif, mp4). `loop` repeats
    WebP and GIF forever (MP4 players decide themselves)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown animation format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if not frames:
        raise ValueError("an animation needs at least one frame")
    if not 0 < fps <= 60:
        raise ValueError(f"fps must be in (0, 60], got {fps}")
    played = [frames[i].convert("RGB") for i in frame_order(len(frames), bounce)]
    if fmt == "mp4":
        return _mp4(played, fps)
    out = io.BytesIO()
    options = {"loop": 0} if loop else {}
    if fmt == "webp":
        options |= {"lossless": True}
    played[0].save(
        out,
        format=fmt.upper(),
        save_all=True,
        append_images=played[1:],
        duration=round(1000 / fps),
        **options,
    )
    return out.getvalue()


def _mp4(frames: list[Image.Image], fps: float) -> bytes:
    """H.264 in MP4; yuv420p wants even sides, so odd ones are padded by a pixel."""
    import av  # the API extra's; imported here so that reading this module costs nothing

    width, height = frames[0].size
    even = (width + width % 2, height + height % 2)
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = even
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            if frame.size != even:
                padded = Image.new("RGB", even)
                padded.paste(frame)
                frame = padded
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    return out.getvalue()
