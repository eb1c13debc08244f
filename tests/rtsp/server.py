"""A test RTSP camera: GStreamer's RTSP server streaming H.264 frames with their number burned in.

Run with the system Python (/usr/bin/python3: Debian's GObject bindings are built for it; see
tests/rtsp/install.sh), not the virtualenv's:

    /usr/bin/python3 tests/rtsp/server.py --port 8554 --fps 20 --epoch 1700000000.0

It serves rtsp://127.0.0.1:PORT/cam and prints ``ready`` once listening. Frame ``n`` is the frame
due at ``epoch + n / fps`` on the wall clock, so a server restarted with the same ``--epoch`` goes on
numbering where a camera that never stopped would be: the frames it "sent" while it was down are the
numbers a client never sees. The number is drawn as 16 bars across the top half of the image (white =
1, most significant bit first) and inverted in the bottom half: ``decode_frame_number`` reads it back
from a decoded, even JPEG-re-encoded, frame.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

WIDTH, HEIGHT = 320, 240
BITS = 16
BAR = WIDTH // BITS          # 20 px per bit
WHITE, BLACK = 235, 16       # video-range luma


def frame_bytes(number: int) -> bytes:
    """A GRAY8 frame showing ``number`` (mod 2**16) as bars."""
    bits = [(number >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    top = b"".join(bytes([WHITE if bit else BLACK]) * BAR for bit in bits)
    bottom = b"".join(bytes([BLACK if bit else WHITE]) * BAR for bit in bits)
    return top * (HEIGHT // 2) + bottom * (HEIGHT // 2)


def decode_frame_number(gray_rows) -> int | None:  # noqa: ANN001 - any 2-D indexable of luma values
    """Read the number back from an H x W luma image (numpy array or nested lists); None if unreadable."""
    number = 0
    for i in range(BITS):
        x = i * BAR + BAR // 2
        top = int(gray_rows[HEIGHT // 4][x])
        bottom = int(gray_rows[3 * HEIGHT // 4][x])
        if abs(top - bottom) < 80:  # the two halves must disagree clearly
            return None
        number = (number << 1) | (top > bottom)
    return number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--epoch", type=float, default=None, help="wall-clock time of frame 0 (default: now)")
    args = parser.parse_args()
    epoch = time.time() if args.epoch is None else args.epoch

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    caps = f"video/x-raw,format=GRAY8,width={WIDTH},height={HEIGHT},framerate={args.fps}/1"
    # A key frame every half second: a client that (re)connects decodes within half a second.
    launch = (f"( appsrc name=src is-live=true do-timestamp=true format=time caps={caps} "
              f"! videoconvert ! video/x-raw,format=I420 "
              f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={max(1, args.fps // 2)} "
              f"! rtph264pay name=pay0 pt=96 config-interval=1 )")

    def on_media_configure(_factory, media) -> None:  # noqa: ANN001 - GStreamer objects
        appsrc = media.get_element().get_child_by_name("src")
        state = {"next": None}

        def on_need_data(src, _length) -> None:  # noqa: ANN001
            # Block until the next frame is due, as a camera's sensor would; when late, skip to the
            # frame due now (a camera does not slow down for a slow network).
            due_now = int((time.time() - epoch) * args.fps)
            number = due_now if state["next"] is None else max(state["next"], due_now)
            delay = epoch + number / args.fps - time.time()
            if delay > 0:
                time.sleep(delay)
            state["next"] = number + 1
            buffer = Gst.Buffer.new_wrapped(frame_bytes(number))
            buffer.duration = Gst.SECOND // args.fps
            src.emit("push-buffer", buffer)

        appsrc.connect("need-data", on_need_data)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(False)  # each client gets its own pipeline, starting at a key frame
    factory.connect("media-configure", on_media_configure)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {args.port}", file=sys.stderr, flush=True)
        return 1

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"ready rtsp://127.0.0.1:{args.port}/cam", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
