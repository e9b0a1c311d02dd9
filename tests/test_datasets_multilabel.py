"""The multi-label datasets (cluttered-digits-multilabel): their samples (``labels``,
``objects``, ``object_labels``) against hand-built expectations, boxes through the
transforms, collation, the command line, and the single-label default left byte for
byte as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness import codedigest, config, data, evalcache, run, train
from harness.data.core import ObjectsRandomCrop
from harness.errors import UserError
from tests import dataset_fixtures as fixtures
from tests.dataset_fixtures import Fixture

SIZE = 64


def _build(name: str, fx: Fixture | Path, split: str, **kw: Any) -> data.Split:
    root = fx.root if isinstance(fx, Fixture) else fx
    return data.build(name, split, data_dir=root, image_size=SIZE, **kw)


def _error(name: str, root: Path, split: str = "test") -> str:
    with pytest.raises(UserError) as err:
        _build(name, root, split)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _hot(classes: tuple[int, ...], n: int) -> list[float]:
    return [1.0 if c in classes else 0.0 for c in range(n)]


def test_the_registry_says_which_datasets_are_multi_label() -> None:
    meta = {n: data.DATASETS.entry(n).meta for n in data.DATASETS.names()}
    assert sorted(n for n, m in meta.items() if m.get("multi_label")) == [
        "cluttered-digits-multilabel"]
    assert not data.DatasetInfo("x", 2, (8, 8), (0.5,) * 3, (0.5,) * 3, False).multi_label


# ---- cluttered-digits-multilabel

def _multi(split: str, n: int = 24, **kw: Any) -> data.Split:
    return data.build("cluttered-digits-multilabel", split,
                      **{"n_train" if split == "train" else "n_test": n}, **kw)


def test_multilabel_digits_every_digit_is_a_label_with_its_box() -> None:
    from harness.data.digits import INK_THRESHOLD, generate_multi_digits, mnist_sources

    s = _multi("test")
    assert s.info.multi_label and s.info.multi_object and s.info.has_boxes
    d = generate_multi_digits(24, "test", 0)
    counts = (d["object_labels"] >= 0).sum(1)
    assert set(counts.tolist()) == {2, 3}
    _, labels, is_test = mnist_sources()
    for i in range(len(s)):
        x = s.dataset[i]
        k = int(counts[i])
        classes = d["object_labels"][i, :k].tolist()
        assert len(set(classes)) == k  # distinct classes
        assert x["labels"].tolist() == _hot(tuple(classes), 10)
        assert x["object_labels"].tolist() == [*classes, *[-1] * (3 - k)]
        src = d["source"][i, :k]
        assert is_test[src].all() and labels[src].tolist() == classes  # the test sources
        boxes = x["objects"][:k]
        assert torch.equal(boxes, torch.from_numpy(d["objects"][i, :k]))
        assert torch.isnan(x["objects"][k:]).all()
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert x["label"] == classes[int(area.argmax())]
        assert torch.equal(x["bbox"], torch.cat([boxes[:, :2].min(0).values,
                                                 boxes[:, 2:].max(0).values]))
        # each box holds ink drawn over the background (the last digit's box, in full)
        back = data.denormalize(x["image"][None], s.info)[0]
        x1, y1, x2, y2 = boxes[k - 1].long().tolist()
        assert back[:, y1:y2, x1:x2].amax() > back.mean() + INK_THRESHOLD
    train = generate_multi_digits(24, "train", 0)
    assert not is_test[train["source"][train["source"] >= 0]].any()


def test_multilabel_digits_are_seeded_and_apart_from_the_single_label_ones() -> None:
    from harness.data.digits import generate_digits, generate_multi_digits

    a, b = generate_multi_digits(8, "train", 0), generate_multi_digits(8, "train", 0)
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    assert not np.array_equal(a["images"], generate_multi_digits(8, "train", 1)["images"])
    assert not np.array_equal(a["images"], generate_multi_digits(8, "test", 0)["images"])
    assert not np.array_equal(a["images"], generate_digits(8, "train", 0)["images"])
    with pytest.raises(UserError, match="generated at 64 px"):
        _multi("train", image_size=32)


def test_multilabel_digits_objects_follow_the_batch_augmentation() -> None:
    """The per-batch random crop (and a flip) moves each object as it moves a named
    box: each row equals :class:`BatchRandomCrop`'s move of that row as ``bbox``."""
    s = _multi("train", 16)
    assert isinstance(s.batch_transform, ObjectsRandomCrop)
    batch = next(iter(data.loader(s, 16, torch.device("cpu"))))
    for flip in (False, True):
        crop = ObjectsRandomCrop(s.info, flip=flip)
        torch.manual_seed(3)
        out = crop(batch)
        torch.manual_seed(3)
        plain = data.BatchRandomCrop(s.info, flip=flip)
        off = plain.offsets(16)
        flips = torch.rand(16) < 0.5 if flip else None
        assert torch.equal(out["image"], plain(batch, off, flips)["image"])
        for j in range(3):
            row = plain({**batch, "bbox": batch["objects"][:, j]}, off, flips)["bbox"]
            assert torch.allclose(out["objects"][:, j], row, atol=0, rtol=0, equal_nan=True)
        pad = torch.isnan(batch["objects"]).all(-1)
        assert torch.isnan(out["objects"][pad]).all() and not torch.isnan(
            out["objects"][~pad]).any()
        assert torch.equal(out["object_labels"], batch["object_labels"])


def test_multilabel_digits_boxes_follow_a_resize_and_crop() -> None:
    from torchvision.transforms import v2

    s = _multi("test", 8)
    tf = v2.Compose([v2.Resize(96), v2.CenterCrop(80), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(s.info.mean, s.info.std)])
    moved = s.dataset.with_transform(tf)  # type: ignore[attr-defined]
    for i in range(len(s)):
        x, y = s.dataset[i], moved[i]
        assert y["image"].shape == (3, 80, 80)
        want = (x["objects"] * 1.5 - 8).clamp(0, 80)
        assert torch.allclose(y["objects"], want, atol=1e-4, equal_nan=True)
        assert torch.equal(y["object_labels"], x["object_labels"])


# ---- the single-label default, as it was

#: the default's checkpoint keys, its code digest and its test split's id: pinned, so
#: that nothing added for multi-label data changes what a cached default checkpoint is
DEFAULT_KEYS = {"baseline": "37054b9b8db6a04f", "abn": "1ef5158880fd8fba"}
DEFAULT_CODE = "31351aee3b708a31"
DEFAULT_SPLIT_ID = "a2959388cc5af7b5b4f73f41"
#: sha256 over the first 32 test samples of cluttered-digits (each key, sorted, and its
#: values' bytes), and over a train batch of 16 after the per-batch crop from seed 0
DEFAULT_SAMPLES = "48ee5c3df585949840a64ab3eb69a5f12a022368fb2cf2b1ada8093fc20d64cd"
DEFAULT_BATCH = "5ea9b27049b3ded21f6849f4434e143ca11523176cc88309d8d0322b03a7d8e3"


def test_the_single_label_default_is_byte_for_byte_as_before() -> None:
    cfg = config.resolve("default")
    assert cfg.dataset == "cluttered-digits"
    assert {m: train.cache_key(m, cfg, train.method_options(m, cfg))
            for m in DEFAULT_KEYS} == DEFAULT_KEYS
    assert codedigest.digest(data.DATASETS.get("cluttered-digits")) == DEFAULT_CODE
    s = data.build("cluttered-digits", "test", n_test=32)
    assert evalcache.split_id(s, {"n_test": 32}) == DEFAULT_SPLIT_ID
    h = hashlib.sha256()
    for i in range(32):
        x = s.dataset[i]
        assert "labels" not in x and "object_labels" not in x and not s.info.multi_label
        for k in sorted(x):
            h.update(k.encode())
            h.update(torch.as_tensor(x[k]).numpy().tobytes())
    assert h.hexdigest() == DEFAULT_SAMPLES
    tr = data.build("cluttered-digits", "train", n_train=16)
    batch = next(iter(data.loader(tr, 16, torch.device("cpu"))))
    torch.manual_seed(0)
    assert tr.batch_transform is not None
    out = tr.batch_transform(batch)
    h = hashlib.sha256()
    for k in sorted(out):
        h.update(k.encode())
        h.update(out[k].contiguous().numpy().tobytes())
    assert h.hexdigest() == DEFAULT_BATCH


# ---- collation, the data-randomisation test, the command line

@pytest.mark.parametrize("name", ["cluttered-digits-multilabel"])
def test_batches_collate_the_multi_label_keys(name: str, tmp_path: Path) -> None:
    if name in fixtures.BUILDERS:
        fx = fixtures.BUILDERS[name](tmp_path)
        s = _build(name, fx, "train")
    else:
        s = _multi("train", 8)
    c = s.info.num_classes
    for workers in (0, 1):
        s.num_workers = workers
        batch = next(iter(data.loader(s, 4, torch.device("cpu"), dataset=s.eval_view())))
        assert batch["labels"].shape == (4, c) and batch["labels"].dtype == torch.float32
        assert batch["label"].shape == (4,)
        if s.info.has_boxes:
            k = batch["objects"].shape[1]
            assert batch["objects"].shape == (4, k, 4)
            assert batch["object_labels"].shape == (4, k)
            assert batch["object_labels"].dtype == torch.long
        with pytest.raises(TypeError):
            data.permuted_labels(s, 0)


def _main(*args: str, tmp: Path) -> int:
    return run.main([*args, "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"),
                     "--no-progress", "--device", "cpu", "--workers", "0"])


@pytest.mark.parametrize("name", ["cluttered-digits-multilabel"])
def test_check_data_reads_a_multi_label_dataset(name: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--dataset", name, "--check-data"]
    if name in fixtures.BUILDERS:
        fx = fixtures.BUILDERS[name](tmp_path / "data")
        args += ["--data-dir", str(fx.root)]
    else:
        args += ["--set", "dataset_kwargs.n_train=40", "--set", "dataset_kwargs.n_test=20"]
    assert _main(*args, tmp=tmp_path) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "classes per image" in out
    assert ("objects per image" in out) == (name != "celeba")


@pytest.mark.parametrize("name", ["cluttered-digits-multilabel"])
@pytest.mark.parametrize("methods", ["all", "baseline,abn"])
def test_runs_on_multi_label_data_are_refused_in_one_line(
        name: str, methods: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No method trains on multi-label targets yet: ``--dry-run`` and a run stop
    before any training with one line (the generic run would train on ``label``)."""
    args = ["--dataset", name, "--methods", methods, "--preset", "smoke"]
    if name in fixtures.BUILDERS:
        fx = fixtures.BUILDERS[name](tmp_path / "data")
        args += ["--data-dir", str(fx.root)]
    for extra in (["--dry-run"], []):
        assert _main(*args, *extra, tmp=tmp_path) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (f"error: multi-label dataset {name!r}: no method supports "
                           "multi-label targets yet (--check-data reads and checks it)")
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir())


def test_the_listing_names_the_multi_label_datasets(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    run.print_registries()
    out = capsys.readouterr().out
    assert "cluttered-digits   embedded (the default), boxes\n" in out
    assert "cluttered-digits-multilabel embedded, boxes, multi-label" in out
