"""The report in a real headless browser: it renders, its images load, its script is clean.

Needs Chromium (``scripts/ensure-browser.sh`` installs Debian's package where it can); the
tests are skipped, saying so, when no browser is found. ``SMCLUSTER_BROWSER`` names one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--disable-gpu",
    "--no-sandbox",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


@pytest.fixture(scope="module")
def browser() -> str:
    named = os.environ.get("SMCLUSTER_BROWSER")
    found = named or next((b for b in BROWSERS if shutil.which(b)), None)
    if not found:
        pytest.skip(
            "no Chromium/Chrome found: run scripts/ensure-browser.sh (or set "
            "SMCLUSTER_BROWSER) to run the browser test"
        )
    return found


def run_browser(
    browser: str, page: Path, home: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run the browser on ``page`` with its profile and caches in ``home``."""
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={home}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=3600,  # only a hung browser; a busy machine may be slow
        env=env,
        check=False,
    )


def body_attributes(dom: str) -> dict[str, str]:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, "no <body> in the dumped DOM"
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', match.group(1)))


def console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line and ("Uncaught" in line or "rror" in line)
    ]


def test_page_renders_without_errors(browser: str, demo_report: Path, tmp_path: Path) -> None:
    result = run_browser(browser, demo_report, tmp_path / "home", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    body = body_attributes(dom)
    assert body["ready"] == "1", "the page's script did not finish"
    assert body["errors"] == "0" and not console_errors(result.stderr), result.stderr[-2000:]
    assert body["images"] == "decoded", f"sprite sheets did not load: {body}"
    sheets = len(list((demo_report.parent / "img").glob("c*.png")))
    assert int(body["images-decoded"]) == sheets + 1  # + the neighbour sheet
    assert len(re.findall(r'class="card" data-cluster="\d+"', dom)) == 10
    assert len(re.findall(r'class="nbrow"', dom)) == 6
    assert "page 1 of 1" in dom

    shot = tmp_path / "report.png"
    result = run_browser(
        browser, demo_report, tmp_path / "home", f"--screenshot={shot}", "--window-size=1280,2000"
    )
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is blank"


def test_a_broken_sprite_is_reported(browser: str, demo_report: Path, tmp_path: Path) -> None:
    """The decoded flag is real: a corrupt sheet turns it to 'failed'."""
    copy = tmp_path / "report"
    shutil.copytree(demo_report.parent, copy)
    victim = sorted((copy / "img").glob("c*.png"))[0]
    victim.write_bytes(b"not a png")
    result = run_browser(browser, copy / "index.html", tmp_path / "home", "--dump-dom")
    body = body_attributes(result.stdout)
    assert body["ready"] == "1" and body["images"] == "failed"


PROBE = """<script>
(function () {
  const sort = document.getElementById("sort");
  sort.value = "purity";
  sort.dispatchEvent(new Event("change"));
  const cards = Array.from(document.querySelectorAll(".card"));
  document.body.dataset.order = cards.map((c) => c.dataset.cluster).join(",");
  cards[0].click();
  document.body.dataset.modal = document.getElementById("modal").hidden ? "closed" : "open";
  document.body.dataset.modalTiles = String(document.querySelectorAll("#modalbody .t").length);
  const find = document.getElementById("filter");
  find.value = "3";
  find.dispatchEvent(new Event("input"));
  document.body.dataset.found = String(document.querySelectorAll(".card").length);
})();
</script>
</body>"""


def test_sorting_and_opening_a_cluster(browser: str, demo_report: Path, tmp_path: Path) -> None:
    """Drive the page's controls from a script appended to a copy of the page."""
    copy = tmp_path / "report"
    shutil.copytree(demo_report.parent, copy)
    page = copy / "index.html"
    page.write_text(page.read_text().replace("</body>", PROBE))
    result = run_browser(browser, page, tmp_path / "home", "--dump-dom")
    body = body_attributes(result.stdout)
    assert body["errors"] == "0", result.stderr[-2000:]

    data = json.loads(
        re.search(
            r'id="report-data" type="application/json">(.*?)</script>', page.read_text(), re.S
        ).group(1)
    )
    clusters = data["clusters"]
    purity = {c["c"]: (-1 if c["pur"] is None else c["pur"]) for c in clusters}
    expected = sorted(purity, key=lambda c: (-purity[c], c))
    assert [int(c) for c in body["order"].split(",")] == expected
    top = next(c for c in clusters if c["c"] == expected[0])
    assert body["modal"] == "open" and int(body["modal-tiles"]) == top["sheet"]["count"]
    matching = [c for c in clusters if c["c"] == 3 or (c["maj"] and "3" in c["maj"])]
    assert int(body["found"]) == len(matching)
