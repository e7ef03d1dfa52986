"""What a user sees: after the demo, `growth-assets dev` on its instance, and the pages of
``brms_posterior``, ``growth_brms_meta`` and ``goal_forecast_backtest`` opened in headless
Chromium (Debian's package, driven by Playwright). Each picture is opened the way a user
opens it and must have been decoded by the browser with a non-zero size.

Dagster 1.13 renders markdown metadata in the table only under 1,000 characters; a picture
(a PNG as a data URI) is behind the entry's "[Show Markdown]", which opens it in a dialog.
Screenshots go to GROWTH_SCREENSHOT_DIR when set (else the test's tmp folder)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from growth_assets.db.localpg import free_port
from growth_assets_tests.test_dagster_dev import REPO, DagsterDev

PAGES = {
    "brms_posterior": ["picture_population_line", "picture_P", "picture_parameters"],
    "growth_brms_meta": ["diagnostics_trend"],
    "goal_forecast_backtest": ["reliability", "pit_histogram"],
}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is not installed (scripts/install_browser.sh installs it)"
    return path


@pytest.mark.slow
def test_the_ui_shows_each_picture_of_the_fit_and_the_backtest(db_url, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("GROWTH_SCREENSHOT_DIR") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    local = tmp_path / "local"
    env = {**os.environ, "DATABASE_URL": db_url, "GROWTH_LOCAL_DIR": str(local), "GROWTH_ENGINE": "native"}
    env.pop("DAGSTER_HOME", None)
    demo = subprocess.run([sys.executable, "-m", "growth_assets.cli", "demo", "--students", "300"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "backtest of partition" in demo.stdout
    dev = DagsterDev(env, free_port(), tmp_path / "dagster-dev.log")
    seen = {}
    try:
        dev.wait_ready()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            # the first-visit newsletter dialog, whenever it appears
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
            for asset, labels in PAGES.items():
                page.goto(f"{dev.url}/assets/{asset}", wait_until="networkidle")
                page.locator("td", has_text=re.compile(f"^{labels[0]}$")).wait_for()
                page.screenshot(path=str(shots / f"{asset}.png"), full_page=True)
                for label in labels:
                    key_cell = page.locator("td", has_text=re.compile(f"^{label}$"))
                    row = page.locator("tr").filter(has=key_cell)
                    assert row.count() == 1, f"{asset}: no metadata entry {label}"
                    row.get_by_text("[Show Markdown]").click()
                    dialog = page.get_by_role("dialog")
                    img = dialog.locator("img")
                    img.wait_for()
                    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle())
                    seen[label] = img.evaluate("el => [el.naturalWidth, el.naturalHeight, el.src.slice(0, 22)]")
                    dialog.screenshot(path=str(shots / f"{asset}-{label}.png"))
                    page.get_by_role("button", name="Close").click()
                    dialog.wait_for(state="hidden")
            browser.close()
    finally:
        dev.stop()
    assert set(seen) == {label for labels in PAGES.values() for label in labels}
    for label, (w, h, src) in seen.items():
        assert src == "data:image/png;base64,", label
        assert w > 200 and h > 100, (label, w, h)
