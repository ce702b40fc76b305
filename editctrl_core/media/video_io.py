"""Read and write video files (h264 mp4, optional audio) with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch


def write_video(path: str | Path, frames: torch.Tensor, fps: float = 24.0, crf: int = 18,
                audio: tuple[np.ndarray, int] | None = None) -> Path:
    """Write IMAGE frames [F,H,W,3] 0..1 as h264 mp4; `audio` = (samples [channels, n] float32, sample_rate)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = data.shape[2], data.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        astream = None
        if audio is not None:
            samples, rate = audio
            astream = container.add_stream("aac", rate=rate)
            astream.layout = "stereo" if samples.shape[0] == 2 else "mono"
        for frame in data:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            samples, rate = audio
            chunk = 1024
            pts = 0
            for start in range(0, samples.shape[1], chunk):
                part = np.ascontiguousarray(samples[:, start:start + chunk].astype(np.float32))
                aframe = av.AudioFrame.from_ndarray(part, format="fltp", layout=astream.layout.name)
                aframe.sample_rate = rate
                aframe.pts = pts
                pts += part.shape[1]
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


def read_video(path: str | Path) -> tuple[torch.Tensor, float]:
    """Decode all frames of a video file → (IMAGE [F,H,W,3] float 0..1, fps)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 24)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return torch.from_numpy(np.stack(frames)).float() / 255.0, fps
