import pytest

from harness.errors import UserError
from harness.registry import Registry, registering
from methods import METHODS


def test_duplicate_name_raises_naming_both_sources() -> None:
    r: Registry[int] = Registry("thing")
    r.add("a", 1)
    with registering("--include x.py"), pytest.raises(UserError) as err:
        r.add("a", 2)
    assert str(err.value) == ("thing 'a' is registered twice: by attnbench and by "
                              "--include x.py")
    with registering("--include y.py"):
        r.add("b", 3)
    assert r.entry("b").source == "--include y.py" and r.entry("a").source == "attnbench"
    assert r.remove_source("--include y.py") == ["b"] and "b" not in r


def test_unknown_name_suggests_close_matches() -> None:
    r: Registry[int] = Registry("thing")
    r.add("gradcam", 1, higher=True)
    r.add("abn", 2)
    with pytest.raises(UserError) as err:
        r.get("gradcma")
    msg = str(err.value)
    assert "unknown thing 'gradcma'" in msg and "did you mean gradcam" in msg
    assert "\n" not in msg
    assert r.entry("gradcam").meta == {"higher": True}


def test_method_registry_metadata() -> None:
    assert METHODS.names()[:4] == ["baseline", "cam", "gradcam", "abn"]
    assert METHODS.entry("cam").meta["init_from"] == "baseline"
    assert METHODS.entry("abn").meta["attention"] is True


def test_metric_columns_and_sources() -> None:
    from metrics import METRICS

    names = METRICS.names()
    for new in ("balanced_acc", "pointing_game_0px", "siou_confusion_pred",
                "attn_fix_gain_wrong_prob_all", "attn_fix_gain_top1_all", "sparseness",
                "complexity", "class_sensitivity", "avg_drop", "increase_conf",
                "mprt_spearman", "mprt_ssim", "road_morf", "road_lerf", "road_combined",
                "max_sensitivity", "avg_sensitivity", "local_lipschitz"):
        assert new in names, new
    # the lenses' directions are the issue's contract
    for name, up in (("mprt_spearman", False), ("mprt_ssim", False), ("road_morf", False),
                     ("road_lerf", True), ("road_combined", True), ("max_sensitivity", False),
                     ("avg_sensitivity", False), ("local_lipschitz", False)):
        assert METRICS.get(name).higher_is_better is up, name
    # MSABN (Gupta & Sintorn, 2022) defines the binarised-map localisation measure
    assert "Gupta & Sintorn" in METRICS.get("bbox_inside_frac").paper
    assert "Mitsuhara" not in METRICS.get("bbox_inside_frac").paper
    assert "target class" in METRICS.get("siou_confusion").description
    assert not METRICS.get("attn_fix_gain_top1_all").ranked
