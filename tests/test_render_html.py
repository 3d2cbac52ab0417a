"""The rendered HTML leaderboard opened in headless Chromium: its tables, sorting by a clicked
header, and no request leaving the page.

Needs Debian's ``chromium`` (``apt-get install -y chromium``: /usr/bin/chromium) and
``playwright`` from PyPI (the ``dev`` extra), driving that browser; Playwright's own browser
downloads are not used.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_render import fabricate

from cloudbench.harness.render import render

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)",
)


def _leading_number(text: str) -> float | None:
    found = re.search(r"-?\d+(\.\d+)?", text.replace(",", ""))
    return float(found.group()) if found else None


def test_the_page_renders_sorts_and_stays_offline(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the dev extra)")
    out = fabricate(tmp_path, sweep=False, histories=False)
    render(out, published="esccs")
    url = (out / "leaderboard.html").resolve().as_uri()
    requests: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url, wait_until="load")
            table = page.locator("table").first  # AID -> sen12ms-cloud, ranked by OA
            headers = table.locator("thead th")
            assert headers.all_inner_texts() == ["method", "OA (%)", "AA (%)", "Kappa",
                                                 "robustness (OA)"]

            def rows() -> list[list[str]]:
                return [row.locator("td").all_inner_texts()
                        for row in table.locator("tbody tr").all()]

            before = rows()
            assert before[0] == ["esccs", "70.00 ± 1.00 [67.0, 73.0]", "67.00 ± 1.00 [64.0, 70.0]",
                                 "0.650 ± 0.010 [0.620, 0.680]", "0.571"]
            assert [r[0] for r in before[:3]] == ["esccs", "tlf", "kdhn"]
            assert len(before) == 3 + 11  # ours, then the paper's Table II
            assert all(r[-1] == "–" for r in before[3:])

            headers.nth(4).click()  # robustness: ascending, dashes last
            after = rows()
            assert [r[0] for r in after[:3]] == ["kdhn", "tlf", "esccs"]
            assert all(r[-1] == "–" for r in after[3:])
            assert headers.nth(4).get_attribute("aria-sort") == "ascending"
            headers.nth(4).click()  # again: descending
            assert [r[0] for r in rows()[:3]] == ["esccs", "tlf", "kdhn"]

            headers.nth(2).click()  # AA (%), numbers of ours and the paper's rows together
            values = [_leading_number(r[2]) for r in rows()]
            assert values == sorted(values) and values != [_leading_number(r[2]) for r in before]
            headers.nth(0).click()  # method: as text
            names = [r[0] for r in rows()]
            assert names == sorted(names)
            assert headers.nth(2).get_attribute("aria-sort") is None
        finally:
            browser.close()
    assert errors == []
    assert url in requests  # the listener sees requests: the page's own
    assert [r for r in requests if r != url and not r.startswith("data:")] == []
