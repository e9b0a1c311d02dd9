"""Models trained elsewhere (--model): files, callables, keys, rows."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import external, plugins, run
from harness.backbones import build as build_backbone
from harness.data import DatasetInfo
from harness.data import build as build_split
from harness.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
INFO = DatasetInfo(name="toy", num_classes=10, image_size=(64, 64), mean=(0.5,) * 3,
                   std=(0.25,) * 3, has_boxes=True)


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    yield
    plugins.reset()


def _args(tmp: Path, *extra: str) -> list[str]:
    return ["--preset", "smoke", "--db", str(tmp / "db"), "--cache-dir",
            str(tmp / "cache"), "--out", str(tmp / "out"), *extra]


def test_spec_names() -> None:
    assert external.parse("runs/my_net.pt") == external.ModelSpec("my-net", "runs/my_net.pt")
    assert external.parse("mine=runs/a.pt") == external.ModelSpec("mine", "runs/a.pt")
    assert external.parse("pkg.models:make_net") == external.ModelSpec("make-net",
                                                                        "pkg.models:make_net")
    assert external.parse("x/net.py:build").name == "build"
    with pytest.raises(UserError, match="give a file or module:function"):
        external.parse("name=")


def _save_all(tmp: Path) -> tuple[torch.nn.Module, dict[str, Path]]:
    torch.manual_seed(3)
    net = build_backbone("cifar-resnet8", 10).eval()
    x = torch.zeros(2, 3, 64, 64)
    paths = {"state": tmp / "state.pt", "torchscript": tmp / "scripted.pt",
             "export": tmp / "exported.pt2", "method": tmp / "checkpoint.pt"}
    torch.save(net.state_dict(), paths["state"])
    torch.jit.save(torch.jit.trace(net, x), str(paths["torchscript"]))
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes={
        "x": {0: torch.export.Dim("batch")}}), str(paths["export"]))
    # a checkpoint of one of attnbench's methods (its plain backbone)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()}},
               paths["method"])
    return net, paths


def test_every_file_kind_loads_to_the_same_logits(tmp_path: Path) -> None:
    net, paths = _save_all(tmp_path)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    want = net(x)
    for kind, path in paths.items():
        assert external.archive_kind(path) == {"method": "state"}.get(kind, kind)
        loaded = external.load(external.ModelSpec("m", str(path)), "cifar-resnet8", INFO)
        got = external.External(loaded, INFO)(x).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # a state dict becomes attnbench's backbone: the scored layer's explainers fit
        assert hasattr(external.External(loaded, INFO), "backbone") == (
            kind in ("state", "method"))


def test_bad_models_are_one_line(tmp_path: Path) -> None:
    _net, paths = _save_all(tmp_path)
    with pytest.raises(UserError, match="does not fit backbone 'cifar-resnet14'"):
        external.load(external.ModelSpec("m", str(paths["state"])), "cifar-resnet14", INFO)
    with pytest.raises(UserError, match=r"logits of shape \(3, 10\) for 3 images; dataset "
                                        r"'five' has 5 classes"):
        external.load(external.ModelSpec("m", str(paths["torchscript"])), "cifar-resnet8",
                      DatasetInfo(name="five", num_classes=5, image_size=(64, 64),
                                  mean=(0.5,) * 3, std=(0.25,) * 3, has_boxes=False))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"--model .*junk\.pt.*not a readable state dict"):
        external.load(external.ModelSpec("m", str(tmp_path / "junk.pt")), "cifar-resnet8",
                      INFO)
    with pytest.raises(UserError, match="no such file"):
        external.load(external.ModelSpec("m", str(tmp_path / "none.pt")), "cifar-resnet8",
                      INFO)
    with pytest.raises(UserError, match="has no function 'nothing'"):
        external.load(external.ModelSpec("m", "harness.external:nothing"), "x", INFO)


def test_model_rows_beside_trained_methods(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A model from elsewhere is scored by the run's explainers (not native) as rows
    of the same leaderboard and store; its key is its weights: a renamed copy, or
    another seed, reads every score from the store."""
    net, paths = _save_all(tmp_path)
    args = _args(tmp_path, "--methods", "baseline", "--explainers", "native,gradcam",
                 "--model", f"mine={paths['state']}", "--model", str(paths["torchscript"]))
    assert run.main(args) == 0
    out = capsys.readouterr()
    frame = pd.read_csv(tmp_path / "out" / "leaderboard.csv").set_index("method")
    assert list(frame.index) == ["baseline", "baseline+gradcam", "mine+gradcam"]
    # the model's accuracy is in its first row (it has no native row): the share of the
    # smoke test images its own forward pass gets right
    test = build_split("cluttered-digits", "test", n_train=64, n_test=32, image_size=64)
    images = torch.stack([test.dataset[i]["image"] for i in range(len(test))])
    labels = torch.tensor([test.dataset[i]["label"] for i in range(len(test))])
    with torch.no_grad():
        want = float((net(images).argmax(1) == labels).float().mean())
    assert frame.loc["mine+gradcam", "top1"] == pytest.approx(want)
    assert pd.isna(frame.loc["baseline+gradcam", "top1"])
    # the scripted copy is an opaque module: Grad-CAM of the scored layer does not apply
    assert "no scripted+gradcam row" in out.out + out.err
    # the same weights under another name, and a second seed: nothing computed again
    copy = tmp_path / "renamed.pt"
    copy.write_bytes(paths["state"].read_bytes())
    capsys.readouterr()
    again = _args(tmp_path, "--methods", "baseline", "--explainers", "gradcam", "--model",
                  f"other={copy}", "--seeds", "2")
    assert run.main(again) == 0
    text = capsys.readouterr().out
    line = [ln for ln in text.splitlines() if ln.startswith("  other+gradcam")]
    assert len(line) == 2 and all("evaluation cached" in ln for ln in line), text


def test_example_timm_model_trained_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """examples/timm_model.py: trained by its own loop, then evaluated from its state
    dict (--backbone) and from its callable: the same weights, so the same key, and
    the second reads every score from the store."""
    weights = tmp_path / "timm.pt"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "timm_model.py"), "--out",
                           str(weights), "--images", "128", "--epochs", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    # the timm model split into attnbench's backbone shape computes what timm computes
    import timm

    from harness import backbones, testing

    net = timm.create_model("resnet10t", num_classes=10)
    net.load_state_dict(torch.load(weights, weights_only=True))
    split = external.load(external.ModelSpec("t", str(weights)), "resnet10t", INFO)
    assert isinstance(split, backbones.SplitBackbone)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(split(x), net.eval()(x), rtol=1e-5, atol=1e-5)
    # and passes the backbone contract (its split composes to its forward)
    testing.check_backbone("resnet10t")
    assert run.main(_args(tmp_path, "--model", str(weights), "--backbone", "resnet10t",
                          "--explainers", "gradcam,random")) == 0
    frame = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(frame["method"]) == ["timm+gradcam", "timm+random"]
    assert frame["insertion_auc"].notna().all() and frame["mprt_spearman"].notna().all()
    assert list(frame["top1"].notna()) == [True, False]  # in the model's first row
    capsys.readouterr()
    monkeypatch.setenv("ATTNBENCH_EXAMPLE_WEIGHTS", str(weights))
    assert run.main(_args(tmp_path, "--model", f"{ROOT / 'examples' / 'timm_model.py'}:model",
                          "--explainers", "gradcam,random")) == 0
    assert capsys.readouterr().out.count("evaluation cached") == 2
    again = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(again["method"]) == ["model+gradcam", "model+random"]
    assert list(again["insertion_auc"]) == list(frame["insertion_auc"])
