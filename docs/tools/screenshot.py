"""The README's picture of a leaderboard: the top of a leaderboard.html (its header and
table) as the browser shows it in a 1440 px wide window, written as a small PNG.

    python docs/tools/screenshot.py                        # runs/latest/leaderboard.html
    python docs/tools/screenshot.py runs/x/leaderboard.html --out /tmp/board.png

Needs the system's Chromium and its driver (``apt-get install chromium
chromium-driver``) and selenium (the ``test`` extra); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from browser import BrowserUnavailable, chromium
from PIL import Image

#: docs/images/leaderboard.png of this checkout, wherever the script is run from
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "images" / "leaderboard.png"


def screenshot(page: Path, width: int = 1440, height: int = 900) -> Image.Image:
    """The top ``width`` × ``height`` px of ``page`` rendered at ``width`` px, one device
    pixel per CSS pixel, reduced to a 256-colour palette (text stays crisp: no dither).

    Raises:
        BrowserUnavailable: no browser or driver, or the browser did not start.
    """
    driver = chromium(width, height)
    try:
        # the viewport exactly width × height, whatever the window's frame takes
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        driver.get(page.resolve().as_uri())
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    image = Image.open(io.BytesIO(png)).convert("RGB").crop((0, 0, width, height))
    return image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python docs/tools/screenshot.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", nargs="?", type=Path, default=Path("runs/latest/leaderboard.html"),
                   help="the leaderboard.html to draw (default runs/latest/leaderboard.html)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="the PNG to write (default docs/images/leaderboard.png of this checkout)")
    p.add_argument("--width", type=int, default=1440, help="window width in px (default 1440)")
    p.add_argument("--height", type=int, default=900,
                   help="height of the picture in px, from the top of the page (default 900)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.page.is_file():
        print(f"screenshot: no such file: {args.page} (make one with python -m harness.run, "
              "or name a leaderboard.html)", file=sys.stderr)
        return 2
    if args.width < 1 or args.height < 1:
        print(f"screenshot: --width and --height must be positive, not {args.width} × "
              f"{args.height}", file=sys.stderr)
        return 2
    try:
        image = screenshot(args.page, args.width, args.height)
    except BrowserUnavailable as e:
        print(f"screenshot: {e}", file=sys.stderr)
        return 1
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out, optimize=True)
    except OSError as e:
        print(f"screenshot: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {image.width} × {image.height} px, {args.out.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
