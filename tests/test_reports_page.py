"""The HTML leaderboard as a reader sees it: figures that keep rows apart and labels
readable, the findings beside their rows, the columns a 1440-px window shows."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.analysis import analyse
from harness.data import DatasetInfo, Split
from harness.evalcache import box_shares, uniform_energy_cached
from harness.evaluate import MethodResult
from harness.paper_values import PaperValue
from harness.stats import SeedScores
from harness.store import Store
from metrics.localization import box_share, energy_pointing_game
from reports import leaderboard as lb
from reports.leaderboard import RunRecord
from tests import browser

N = 40  # test images of the synthetic run
ROWS = ["baseline", "cam", "gradcam", "abn", "abn-amb", "abn-cot", "abn-comb", "abn-hk",
        "msabn", "msabn-puzzle", "msabn-cr", "discattn-ch", "discattn-px",
        "discattn-gradcam"]


def result(name: str, scores: dict[str, np.ndarray], *, explainer: str = "native",
           seed: int = 0, gallery: dict[str, np.ndarray] | None = None,
           curves: dict[str, np.ndarray] | None = None,
           timing: dict[str, float] | None = None) -> MethodResult:
    classes = np.arange(N) % 3
    per_image = {k: SeedScores(np.asarray(v, float), classes[:len(v)], np.arange(len(v)))
                 for k, v in scores.items()}
    values = {k: float(np.mean(v)) for k, v in scores.items()} | (timing or {})
    return MethodResult(name, seed, values, per_image, set(), curves or {}, n_test=N,
                        n_causal=N, gallery=gallery or {}, explainer=explainer)


def synthetic_run(*, num_classes: int = 10, uniform: float | None = None,
                  seeds: tuple[int, ...] = (0,), label_names: list[str] | None = None
                  ) -> RunRecord:
    """The default run's shape: 14 methods and the random row, the columns of the
    table's default lenses and some of the others, curves, the gallery and class maps
    (10 rows). cam and gradcam explain alike (scores equal to float rounding,
    local_lipschitz, in the map's own units, 64 times apart); the ABN family's energy_pg
    is low."""
    rng = np.random.default_rng(0)
    results = []
    for seed in seeds:
        for i, name in enumerate([*ROWS, "baseline"]):
            random_row = i == len(ROWS)
            # gradcam draws cam's scores; the random row draws its own
            twin = "random" if random_row else "cam" if name == "gradcam" else name
            base = np.random.default_rng([zlib.crc32(twin.encode()), seed])
            scores = {
                "top1": (base.random(N) < 0.9).astype(float),
                "top5": np.ones(N),
                "balanced_acc": (base.random(N) < 0.9).astype(float),
                "insertion_auc": base.random(N), "deletion_auc": base.random(N),
                "energy_pg": (0.05 + 0.05 * base.random(N) if name.startswith("abn")
                              else 0.2 + 0.1 * base.random(N) if random_row
                              else 0.3 + 0.4 * base.random(N)),
                "bbox_inside_frac": base.random(N),
                "pointing_game": (base.random(N) < 0.8).astype(float),
                "road_morf": base.random(N), "mprt_spearman": base.random(N),
                # in the map's own units: CAM's maps are 64 times Grad-CAM's here
                "local_lipschitz": base.random(N) * (64.0 if name == "cam" else 1.0),
            }
            if name == "gradcam":  # cam's maps up to scale: its scores to float rounding
                for k in ("insertion_auc", "deletion_auc", "energy_pg", "bbox_inside_frac",
                          "road_morf", "mprt_spearman"):
                    scores[k] = scores[k] + 1e-5
            if random_row:  # the random explainer: no accuracy columns
                for k in ("top1", "top5", "balanced_acc"):
                    scores.pop(k)
            gallery = {"saliency": rng.random((4, 16, 16))}
            if name.startswith(("abn", "msabn", "cam", "gradcam")) and not random_row:
                gallery |= {"confusion_maps": rng.random((4, 2, 16, 16)),
                            "confusion_classes": np.tile([[1, 2]], (4, 1))}
            curves = {"insertion_auc": np.sort(rng.random(11)),
                      "deletion_auc": np.sort(rng.random(11))[::-1]}
            results.append(result("baseline" if random_row else name, scores, seed=seed,
                                  explainer="random" if random_row else "native",
                                  gallery=gallery, curves=curves,
                                  timing={"explain_ms": 0.1 + i}))
    method_meta: dict[str, dict[str, Any]] = {
        r.row: {"explainer": "random" if r.explainer == "random" else "native",
                "reference": r.explainer == "random", "seeds": {},
                "train": {"epochs": 1, "lr": 0.1, "batch_size": 8}}
        for r in results}
    analysis = analyse(results, reference_rows={"baseline+random"}, n_resamples=200)
    meta: dict[str, Any] = {"dataset": "cluttered-digits", "backbone": "cifar-resnet8",
                            "preset": "smoke", "n_test": N, "n_causal": N, "device": "cpu",
                            "protocol": "rise", "num_classes": num_classes,
                            "seeds": list(seeds)}
    if uniform is not None:
        meta["uniform_energy_pg"] = uniform
    if label_names is not None:
        meta["label_names"] = label_names
    first = [r for r in results if r.seed == seeds[0]]
    return RunRecord(results=results, analysis=analysis, gallery_rows=first, meta=meta,
                     method_meta=method_meta, config={}, gallery_images=rng.random((4, 16, 16, 3)),
                     gallery_labels=np.array([0, 1, 2, 1]))


@pytest.fixture(scope="module")
def run_page() -> tuple[RunRecord, str]:
    record = synthetic_run(uniform=0.15)
    return record, lb.render_html(record, lb.to_frame(record))


def board_row(html: str, row: str) -> str:
    """The leaderboard's ``<tr>`` of ``row``."""
    board = html[html.index('id="board"'):html.index("</table>", html.index('id="board"'))]
    return re.search(rf'<tr>\s*<td class="name" data-key="{re.escape(row)}".*?</tr>', board,
                     re.S).group(0)


# ---- 1: every curve its own look, legends off the curves ---------------------------

def test_every_row_has_its_own_colour_and_line_style_in_every_figure() -> None:
    record = synthetic_run()
    styles = lb.line_styles(record)
    assert len(styles) == 15
    looks = [(tuple(s["color"]), s["linestyle"]) for s in styles.values()]
    assert len(set(looks)) == 15  # no two rows alike
    assert len({c for c, _ in looks}) == 15  # every row its own colour, too
    assert styles["baseline+random"]["linestyle"] == ":"  # the floor, dotted
    assert all(s["linestyle"] != ":" for r, s in styles.items() if r != "baseline+random")
    # what the figures draw; the random row's group draws it alike
    (_native, _own), (_title, sub) = lb.by_explainer(record)
    for rec in (record, sub):
        for ax in lb.curves_figure(rec).axes:
            for line in ax.get_lines():
                row = line.get_label().rsplit(" (", 1)[0]
                assert line.get_linestyle() == styles[row]["linestyle"]
                assert tuple(line.get_color()) == tuple(styles[row]["color"])
    assert lb.line_styles(sub) == styles


def test_legends_sit_below_the_axes_not_over_the_curves() -> None:
    fig = lb.curves_figure(synthetic_run())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    axes = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(axes) == 2  # insertion and deletion
    for ax in axes:
        legend = ax.get_legend().get_window_extent(renderer)
        frame = ax.get_window_extent(renderer)
        assert legend.y1 < frame.y0  # wholly below the plotting area
        texts = ax.get_legend().get_texts()
        assert len(texts) == 15
        for t in texts:  # and inside the figure
            e = t.get_window_extent(renderer)
            assert e.y0 >= 0 and e.x1 <= fig.bbox.x1, t.get_text()


# ---- 2: labels readable at the size the page shows the figures -----------------------

def _on_page_px(fig: Any, text: Any) -> float:
    """The height of a text's font on the page, in CSS px (the PNG is shown at its own
    size when it is no wider than the page)."""
    width_px = fig.get_figwidth() * lb.PNG_DPI
    shown = min(1.0, lb.PAGE_WIDTH_PX / width_px)
    return text.get_fontsize() * lb.PNG_DPI / 72 * shown


def test_gallery_titles_are_readable_and_inside_the_figure() -> None:
    record = synthetic_run()
    fig = lb.gallery_figure(record)
    assert fig.get_figwidth() * lb.PNG_DPI <= lb.PAGE_WIDTH_PX + 1
    (ax,) = fig.axes
    titles = [t for t in ax.texts if t.get_text() in ("image", *ROWS, "baseline+random")]
    assert [t.get_text() for t in titles] == ["image", *ROWS, "baseline+random"]
    for t in ax.texts:
        assert _on_page_px(fig, t) >= 12.0  # 9 CSS pt
    # fifteen columns: the long names slant, and no title runs out of the figure
    assert all(t.get_rotation() > 0 for t in titles)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    box = fig.bbox
    for t in ax.texts:
        e = t.get_window_extent(renderer)
        assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y1 <= box.y1 + 1, t.get_text()
    # the corner label: the class number, or its name where the run recorded names
    assert [t.get_text() for t in ax.texts if t not in titles] == ["0", "1", "2", "1"]
    named = synthetic_run(label_names=["bird", "cat", "dog"])
    (ax,) = lb.gallery_figure(named).axes
    assert [t.get_text() for t in ax.texts][-4:] == ["bird", "cat", "dog", "cat"]


def test_few_rows_keep_level_titles_and_large_tiles() -> None:
    record = synthetic_run()
    record.gallery_rows = record.gallery_rows[:2]
    fig = lb.gallery_figure(record)
    (ax,) = fig.axes
    assert all(t.get_rotation() == 0 for t in ax.texts)
    # tiles at their full 1.55 inches: three columns are far narrower than the page
    assert fig.get_figwidth() == pytest.approx(3 * 1.55 * (16 + lb.GAP) / 16 - 1.55 * lb.GAP
                                               / 16, rel=1e-6)


def test_mosaic_figures_fit_the_page_with_readable_labels() -> None:
    record = synthetic_run()
    fig = lb.confusion_figure(record)
    assert fig is not None
    assert fig.get_figwidth() * lb.PNG_DPI <= lb.PAGE_WIDTH_PX + 1
    (ax,) = fig.axes
    assert ax.texts and all(_on_page_px(fig, t) >= 12.0 for t in ax.texts)
    assert lb.fit_label("vs Black_footed_Albatross · sIoU 0.46", 100).endswith("…")
    assert lb.label_px(lb.fit_label("vs Black_footed_Albatross · sIoU 0.46", 100)) <= 100
    assert lb.fit_label("cat", 100) == "cat"


def test_class_names_reach_the_split_info(tmp_path: Path) -> None:
    """A folder dataset's class folders and a published dataset's class list (CIFAR's
    meta pickle) are the names the reports show (the run records them from the split's
    info)."""
    from harness import data
    from tests import dataset_fixtures

    fx = dataset_fixtures.make_folder(tmp_path / "folder")
    split = data.build("folder", "test", data_dir=fx.root, image_size=32)
    assert split.info.label_names == ("bird", "cat", "dog") == fx.classes
    cifar = dataset_fixtures.make_cifar(tmp_path / "cifar", "cifar10")
    split = data.build("cifar10", "test", data_dir=cifar.root)
    assert split.info.label_names == cifar.classes and len(cifar.classes) == 10
    cub = dataset_fixtures.make_cub2011(tmp_path / "cub")
    split = data.build("cub200-2011", "test", data_dir=cub.root, image_size=32)
    # 200 classes, the fixture's three named: a partial list is no list
    assert split.info.num_classes == 200 and split.info.label_names == ()


# ---- 4 to 6: names, stars, the collapsed figure, stability with one seed -----------------

def test_names_and_stars_do_not_wrap(run_page: tuple[RunRecord, str]) -> None:
    _record, html = run_page
    assert "td.name b, td.key, #board td, #comparisons td { white-space: nowrap; }" in html
    assert "::after" not in html  # the star is in the cell, beside its value
    best = re.findall(r'<td data-sort="[^"]*"[^>]*class="[^"]*best[^"]*">([^<]*)(.*?)</td>', html)
    assert best
    for value, rest in best:
        assert re.fullmatch(r"\d+\.\d+", value)
        # the value, its comparison and finding marks, the star; the interval after it
        assert re.match(r'(<span class="mark [^"]*" title="[^"]*">.</span>)?'
                        r'(<a class="note-mark[^>]*>.</a>)?'
                        r'<span class="star" title="the best of the column">★</span>'
                        r'<span class="ci">', rest), rest


def test_class_confusion_is_collapsed_with_a_summary(run_page: tuple[RunRecord, str]) -> None:
    _record, html = run_page
    block = re.search(r'<details id="confusion-figure">(.*?)</details>', html, re.S)
    assert block is not None  # closed by default: no "open" attribute
    summary = re.search(r"<summary[^>]*>(.*?)</summary>", block.group(1), re.S).group(1)
    assert "\n" not in summary.strip()
    assert "the 10 rows with class maps on the first 4 test images" in summary
    assert block.group(1).count("data:image/png;base64,") == 1


def test_one_seed_says_why_there_is_no_stability(run_page: tuple[RunRecord, str]) -> None:
    _record, html = run_page
    section = html[html.index('<h2 id="stability">'):html.index("<h2", html.index(
        '<h2 id="stability">') + 5)]
    assert "No ranking stability with one training seed" in section
    assert "<code>--seeds 3</code>" in section and "<table" not in section
    two = synthetic_run(seeds=(0, 1))
    html2 = lb.render_html(two, lb.to_frame(two))
    section = html2[html2.index('<h2 id="stability">'):]
    assert "Mean Kendall τ" in section[:600] and "one training seed" not in section[:600]


# ---- 7: top-5 of five classes or fewer ----------------------------------------------------

def test_top5_is_left_out_with_five_classes_or_fewer() -> None:
    quoted = (PaperValue("abn", "top5", 0.9, "90 %", "a table"),
              PaperValue("abn", "top1", 0.7, "70 %", "a table"))
    few = synthetic_run(num_classes=5)
    few.paper_values = quoted
    frame = lb.to_frame(few)
    assert "top5" not in frame and "top5_lo" not in frame and "top5_paper" not in frame
    assert "top1" in frame and "top1_paper" in frame
    assert "top5" not in set(lb.comparisons_frame(few)["metric"])
    assert list(lb.paper_frame(few)["metric"]) == ["top1"]
    html = lb.render_html(few, frame)
    assert "top5 ↑" not in html
    assert ("top5 (top-5 accuracy) is left out (table and CSV): cluttered-digits has 5 "
            "classes, and with 5 or fewer it scores every model alike.") in html
    many = synthetic_run(num_classes=6)
    many.paper_values = quoted
    assert "top5" in lb.to_frame(many) and "top5" in set(lb.comparisons_frame(many)["metric"])
    assert list(lb.paper_frame(many)["metric"]) == ["top5", "top1"]
    assert lb.left_out(many) == {}


# ---- 8: what the run shows about a row, beside it -------------------------------------------

def test_coinciding_explanations_are_computed_and_marked(
        run_page: tuple[RunRecord, str]) -> None:
    record, html = run_page
    assert lb.coinciding_rows(record) == [("cam", "gradcam")]
    for row, other in (("cam", "gradcam"), ("gradcam", "cam")):
        assert (f'<a class="note-mark" href="#findings-coinciding-explanations" '
                f'title="the same explanation as {other}: their per-image scores agree">†</a>'
                in board_row(html, row))
    assert "†" not in board_row(html, "abn")
    note = re.search(r'<p id="findings-coinciding-explanations">(.*?)</p>', html, re.S)
    assert note is not None and "<b>cam</b> and <b>gradcam</b>" in note.group(1)
    # a few images a pixel apart at a threshold: still one explanation
    near = synthetic_run()
    gc = next(r for r in near.results if r.row == "gradcam")
    gc.per_image["bbox_inside_frac"].scores[:2] += 0.003
    assert lb.coinciding_rows(near) == [("cam", "gradcam")]
    # a map column apart by more than 0.001 on average: two explanations, no mark
    apart = synthetic_run()
    gc = next(r for r in apart.results if r.row == "gradcam")
    gc.per_image["energy_pg"].scores[:2] += 0.03
    assert lb.coinciding_rows(apart) == []
    html = lb.render_html(apart, lb.to_frame(apart))
    assert "findings-coinciding-explanations" not in html


def test_rows_below_a_uniform_map_are_marked_beside_energy_pg(
        run_page: tuple[RunRecord, str]) -> None:
    record, html = run_page
    low = lb.below_uniform(record)
    assert sorted(low) == sorted(r for r in ROWS if r.startswith("abn"))
    abn = next(r for r in record.analysis.rows if r.method == "abn").estimates["energy_pg"]
    assert abn.hi < 0.15
    cell = re.search(r'<td data-sort="[^"]*"[^>]*class="lens-localisation">([^<]*)'
                     r'(<span class="mark[^>]*>.</span>)?<a class="note-mark below-uniform" '
                     r'href="#findings-less-energy-than-uniform" title="([^"]*)">‡</a>',
                     board_row(html, "abn"))
    assert cell is not None and cell.group(1) == f"{abn.value:.3f}"
    assert cell.group(3) == (f"less energy in the box than a uniform map (0.150): "
                             f"{abn.value:.3f} [{abn.lo:.3f}, {abn.hi:.3f}]")
    assert "below-uniform" not in board_row(html, "cam")
    assert "below-uniform" not in board_row(html, "baseline+random")  # 0.2 - 0.3
    note = re.search(r'<p id="findings-less-energy-than-uniform">(.*?)</p>', html, re.S)
    assert note is not None and "0.150" in note.group(1) and "<b>abn-hk</b>" in note.group(1)
    # without the run's reference (an older run): no mark and no note
    record.meta.pop("uniform_energy_pg")
    try:
        old = lb.render_html(record, lb.to_frame(record))
    finally:
        record.meta["uniform_energy_pg"] = 0.15
    assert "below-uniform" not in old and "findings-less-energy-than-uniform" not in old
    # a reference every row clears: the note says so, nothing is marked
    record.meta["uniform_energy_pg"] = 0.01
    try:
        none = lb.render_html(record, lb.to_frame(record))
    finally:
        record.meta["uniform_energy_pg"] = 0.15
    assert "below-uniform" not in none and "No row puts less of its energy there" in none


def test_box_share_is_the_energy_pg_of_an_even_map() -> None:
    boxes = torch.tensor([[0.0, 0.0, 3.9, 7.9], [2.0, 2.0, 5.0, 5.0]])
    assert box_share(boxes, 8, 8).tolist() == [0.5, 9 / 64]  # pixel centres inside
    # a map even but for one pixel at 0 off both boxes (min-max zeroes a constant map):
    # its energy_pg is the share, counted over the 63 pixels left
    even = torch.ones(2, 8, 8)
    even[:, 7, 7] = 0.0
    np.testing.assert_allclose(energy_pointing_game(even, boxes),
                               [32 / 63, 9 / 63], rtol=1e-6)


def test_uniform_reference_over_the_test_split(tmp_path: Path) -> None:
    from torch.utils.data import Dataset

    class Boxes(Dataset[dict[str, Any]]):
        def __init__(self) -> None:
            self.b = [[0.0, 0.0, 3.9, 7.9], [float("nan")] * 4, [2.0, 2.0, 5.0, 5.0]]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"image": torch.zeros(3, 8, 8), "label": 0, "index": i,
                    "bbox": torch.tensor(self.b[i])}

    info = DatasetInfo("boxes", 2, (8, 8), (0.5,) * 3, (0.25,) * 3, has_boxes=True)
    split = Split(Boxes(), info)
    shares = box_shares(split, batch_size=2)
    assert shares[0] == 0.5 and np.isnan(shares[1]) and shares[2] == 9 / 64
    with Store(tmp_path / "r.sqlite") as store:
        got = uniform_energy_cached(store, split, split_key="k")
        assert got == pytest.approx((0.5 + 9 / 64) / 2)
        split.dataset.b[0] = [0.0, 0.0, 7.9, 7.9]  # type: ignore[attr-defined]
        # read back from the store for this split: the data are not read again
        assert uniform_energy_cached(store, split, split_key="k") == pytest.approx(got)
        assert uniform_energy_cached(store, split, split_key="k2") == pytest.approx(
            (1 + 9 / 64) / 2)
    no_boxes = Split(Boxes(), DatasetInfo("x", 2, (8, 8), (0.5,) * 3, (0.25,) * 3, False))
    assert uniform_energy_cached(None, no_boxes, split_key="k") is None


# ---- 9: the default columns, by lens ----------------------------------------------------------

def test_default_columns_and_lens_checkboxes(run_page: tuple[RunRecord, str]) -> None:
    _record, html = run_page
    head = html[html.index('<table id="board"'):html.index("</thead>")]
    shown = re.findall(r'<th title="[^"]*" class="lens-[a-z]+">([a-z0-9_]+) ', head)
    hidden = re.findall(r'<th title="[^"]*" class="lens-[a-z]+ more">([a-z0-9_]+) ', head)
    assert shown == ["top1", "balanced_acc", "insertion_auc", "deletion_auc", "energy_pg",
                     "pointing_game", "explain_ms"]
    assert sorted(hidden) == sorted(["top5", "road_morf", "bbox_inside_frac",
                                     "mprt_spearman", "local_lipschitz"])
    for lens in ("accuracy", "faithfulness", "localisation", "randomisation", "robustness"):
        assert f'id="cols-{lens}" data-lens="{lens}"' in html
        assert f"body.show-{lens} #board .more.lens-{lens}" in html
    assert 'id="cols-cost"' not in html  # explain_ms, its only column, is shown
    # every body cell carries its column's classes, hidden ones included
    row = board_row(html, "abn")
    assert row.count(" more") == len(hidden)
    # the comparisons table hides the same columns
    cmp_head = html[html.index('id="comparisons"'):]
    cmp_head = cmp_head[:cmp_head.index("</thead>")]
    assert re.findall(r'<th class="lens-[a-z]+ more">([a-z0-9_]+) ', cmp_head)
    # no external resources: the page works offline
    assert not re.search(r'(src|href)="(https?:)?//', html)


@pytest.fixture
def driver() -> Iterator[Any]:
    yield from browser.chromium(1440, 1000)


@pytest.mark.browser
def test_the_page_in_a_1440px_window(run_page: tuple[RunRecord, str], tmp_path: Path,
                                     driver: Any) -> None:
    """The default columns fit without scrolling; a lens's checkbox shows its columns,
    which sort like the others; no console errors."""
    _record, html = run_page
    page = tmp_path / "leaderboard.html"
    page.write_text(html, encoding="utf-8")
    driver.get(page.as_uri())
    box = driver.find_element("css selector", "#board").find_element("xpath", "..")
    assert driver.execute_script("return arguments[0].scrollWidth <= arguments[0]"
                                 ".clientWidth", box)
    assert driver.execute_script("return document.documentElement.scrollWidth <= "
                                 "document.documentElement.clientWidth")
    header = driver.find_element("xpath", "//table[@id='board']//th[starts-with("
                                 "normalize-space(.), 'road_morf')]")
    assert not header.is_displayed()
    driver.find_element("id", "cols-faithfulness").click()
    assert header.is_displayed()
    header.click()  # ascending by the hidden-until-now column
    col = driver.execute_script(
        "return Array.from(document.querySelectorAll('#board th')).indexOf(arguments[0])",
        header)
    values = driver.execute_script(
        "var col = arguments[0]; return Array.from(document.querySelectorAll("
        "'#board tbody tr')).map(function (r) { return parseFloat(r.cells[col]"
        ".dataset.sort); })", col)
    assert values == sorted(values) and len(values) == 15
    driver.find_element("id", "cols-all").click()
    assert driver.find_element(
        "xpath", "//table[@id='board']//th[starts-with(normalize-space(.), "
                 "'local_lipschitz')]").is_displayed()
    driver.find_element("id", "cols-all").click()
    assert not header.is_displayed()
    # the class-confusion figure opens on a click
    figure = driver.find_element("css selector", "#confusion-figure img")
    assert not figure.is_displayed()
    driver.find_element("css selector", "#confusion-figure summary").click()
    assert figure.is_displayed()
    assert browser.console_errors(driver) == []

