"""Make the screenshots in docs/loadtest.md from real runs against `deploylab sim`.

    .venv/bin/python docs/img/loadtest_screenshots.py [WORKDIR]

Starts `deploylab sim --preset small-gpu`, runs `deploylab loadtest --scenario chat-short` and
`deploylab loadtest sweep --scenario chat-short`, opens both report.html files in Debian's
headless Chromium (playwright, /usr/bin/chromium) and saves cropped, palette-compressed PNGs
next to this script. Takes about four minutes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

HERE = Path(__file__).parent
PORT = 18931
URL = f"http://127.0.0.1:{PORT}"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def deploylab(*args: str) -> None:
    print("$ deploylab", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "deploylab", *args], check=True)


def wait_healthy() -> None:
    for _ in range(100):
        try:
            with urllib.request.urlopen(URL + "/v1/models", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("deploylab sim did not start")


def shoot(html: Path, png: Path, top_selector: str, bottom_selector: str) -> None:
    """Screenshot the page from one element's top to another's bottom, 1280 px wide."""
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(), executable_path="/usr/bin/chromium", headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        page = context.new_page()
        page.goto(html.resolve().as_uri())
        top = page.locator(top_selector).first.bounding_box()
        bottom = page.locator(bottom_selector).first.bounding_box()
        assert top is not None and bottom is not None
        clip = {"x": 0, "y": max(0, top["y"] - 16), "width": 1280}
        clip["height"] = bottom["y"] + bottom["height"] + 16 - clip["y"]
        raw = png.with_suffix(".raw.png")
        page.screenshot(path=str(raw), clip=clip, full_page=True)
        context.close()
    image = Image.open(raw).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    image.save(png, optimize=True)
    raw.unlink()
    print(f"{png}: {image.size[0]}x{image.size[1]}, {png.stat().st_size // 1024} KB")


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    sim = subprocess.Popen(
        [sys.executable, "-m", "deploylab", "sim", "--preset", "small-gpu", "--port", str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy()
        run, sweep = work / "run", work / "sweep"
        deploylab("loadtest", "--scenario", "chat-short", "--url", URL, "--rate", "8",
                  "--duration", "40", "--out", str(run), "--no-progress")  # fmt: skip
        deploylab("loadtest", "sweep", "--scenario", "chat-short", "--url", URL,
                  "--duration", "15", "--warmup", "2", "--cooldown", "2", "--max-steps", "8",
                  "--out", str(sweep), "--no-progress")  # fmt: skip
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    shoot(run / "report.html", HERE / "loadtest-report.png", "h1", "#plot-cdf-e2e_ms")
    shoot(sweep / "report.html", HERE / "loadtest-capacity.png", "#capacity", "#capacity ~ table")
    shoot(run / "report.html", HERE / "loadtest-server-metrics.png", "#server-metrics",
          "#plot-server-3")  # fmt: skip


if __name__ == "__main__":
    main()
