"""Fault injection on datasets read from disk: class folders without images, symlinks
that loop, decompression bombs, damaged pixels, text files and file names that are not
UTF-8. Each ends in one line naming the file or folder (exit 2) before any work, is
listed once by ``--check-data``, and PIL's own warnings never reach stderr raw."""

from __future__ import annotations

import codecs
import io
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from harness import data, run
from harness.data.files import DataError, Record, check_records, decode, image_size_of, no_boxes
from tests import dataset_fixtures as fixtures
from tests.dataset_fixtures import Fixture

ROOT = Path(__file__).resolve().parents[1]
#: a PIL warning raised in this process fails the test (pytest would otherwise
#: swallow it: a raw one only shows on a real stderr, see the subprocess tests)
pytestmark = pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
#: the smoke preset's batch of 16 needs this many images for a training run
TRAINABLE = (6, 4)
BOMB = (16000, 16000)  # 256 Mpx: over twice PIL's MAX_IMAGE_PIXELS (~89.5 Mpx)


def _folder(tmp: Path, per_class: tuple[int, int] = fixtures.PER_CLASS) -> Fixture:
    return fixtures.make_folder(tmp / "data", per_class=per_class)


def _args(tmp: Path, root: Path, *extra: str) -> list[str]:
    return ["--preset", "smoke", "--dataset", "folder", "--data-dir", str(root),
            "--no-progress", "--device", "cpu", "--methods", "baseline",
            "--cache-dir", str(tmp / "cache"), "--out", str(tmp / "out"),
            "--db", str(tmp / "runs.sqlite"), *extra]


def _main(tmp: Path, root: Path, *extra: str) -> int:
    return run.main(_args(tmp, root, "--workers", "0", *extra))


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _non_utf8(folder: Path, name: bytes) -> Path:
    """``folder / name`` for a name whose bytes are not UTF-8 (as Python spells it)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def _stopped_before_training(tmp: Path) -> bool:
    return not list(tmp.glob("cache/*.pt"))


# --------------------------------------------------------------------------------------
# class folders without images
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["nothing", "a text file", "images in a subfolder"])
def test_a_train_class_folder_without_images_is_one_line_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str) -> None:
    """It used to become a class of its own (the model got an output the data never
    trains)."""
    fx = _folder(tmp_path)
    empty = fx.root / "train" / "empty"
    empty.mkdir()
    if content == "a text file":
        (empty / "notes.txt").write_text("to do\n")
    elif content == "images in a subfolder":  # only files directly inside are read
        (empty / "more").mkdir()
        shutil.copy(fx.root / "train" / "cat" / "cat_000.jpg", empty / "more" / "a.jpg")
    assert _main(tmp_path, fx.root) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {empty}: a class folder with no images"), line
    assert _stopped_before_training(tmp_path)


def test_an_empty_test_folder_of_a_train_class_is_allowed(tmp_path: Path) -> None:
    """Classes come from train: an empty train class folder is refused from either
    split (both are built with the train classes), an empty test one is harmless."""
    fx = _folder(tmp_path)
    (fx.root / "boxes.csv").unlink()  # it names the images removed
    for p in (fx.root / "test" / "dog").iterdir():
        p.unlink()
    s = data.build("folder", "test", data_dir=fx.root, image_size=32)
    assert s.info.num_classes == 3 and len(s) == 4
    assert {r.label for r in s.dataset.records} == {0, 1}  # type: ignore[attr-defined]
    (fx.root / "train" / "zebra").mkdir()
    for split in ("train", "test"):
        with pytest.raises(DataError, match="zebra: a class folder with no images"):
            data.build("folder", split, data_dir=fx.root, image_size=32)


# --------------------------------------------------------------------------------------
# symlinks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("link", "target", "words"), [
    ("train/loop", "..", "a folder that holds it"),  # would read the dataset in itself
    ("train/here", ".", "a folder that holds it"),
    ("test/up", "../..", "a folder that holds it"),
    ("train/self", "self", "loops back to itself"),  # was silently ignored
    ("train/cat/self.jpg", "self.jpg", "loops back to itself"),
    ("train/gone", "nowhere", "which does not exist"),
])
def test_a_symlink_that_loops_or_leads_nowhere_is_one_line_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str, target: str,
        words: str) -> None:
    fx = _folder(tmp_path)
    (fx.root / link).symlink_to(target)
    assert _main(tmp_path, fx.root) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {fx.root / link}: a symlink") and words in line, line
    assert _stopped_before_training(tmp_path)


def test_symlinks_to_class_folders_and_images_elsewhere_are_read(tmp_path: Path) -> None:
    fx = _folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dog = fx.root / "train" / "dog"
    shutil.move(dog, elsewhere / "dog")
    dog.symlink_to(elsewhere / "dog")
    cat = fx.root / "train" / "cat" / "cat_000.jpg"
    shutil.move(cat, elsewhere / "cat_000.jpg")
    cat.symlink_to(elsewhere / "cat_000.jpg")
    s = data.build("folder", "train", data_dir=fx.root, image_size=32)
    records = s.dataset.records  # type: ignore[attr-defined]
    assert [(r.path.relative_to(fx.root).as_posix(), r.label) for r in records] == [
        (im.relpath, im.label) for im in fx.split("train")]
    assert [len(r.boxes) for r in records] == [len(im.boxes) for im in fx.split("train")]


# --------------------------------------------------------------------------------------
# decompression bombs and damaged pixels
# --------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_one_line_naming_the_file_and_its_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PIL refuses it with ``DecompressionBombError``: that was an unexpected error
    (exit 1, a traceback log)."""
    fx = _folder(tmp_path)
    bomb = fixtures.blank_png(fx.root / "train" / "cat" / "bomb.png", *BOMB)
    assert _main(tmp_path, fx.root) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {bomb}: 256 Mpx, over the 179 Mpx PIL opens"), line
    assert "decompression bomb" in line and _stopped_before_training(tmp_path)
    with pytest.raises(DataError, match=r"bomb.png: 256 Mpx"):
        decode(bomb)  # as a loader worker meets it


def test_pils_warning_band_is_one_warning_line_per_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Between 1x and 2x ``Image.MAX_IMAGE_PIXELS`` PIL warns (from every open) and
    still decodes: the header check says so once per file, in a ``warning:`` line."""
    big = fixtures.blank_png(tmp_path / "big.png", 12000, 12000)  # 144 Mpx
    records = [Record(big, 0, no_boxes())]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning PIL lets out fails
        assert image_size_of(big) == (12000, 12000)
        for split in ("train", "test", "train"):
            check_records(records, 1, split, "t")
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {big}: 12000x12000 px (144 Mpx), over PIL's 89.5 Mpx decompression-bomb "
        "warning size; each use decodes it in full (slow, memory-hungry): consider "
        "downscaling it"]
    # decoding (a small image, the limit lowered to put it in the band)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    small = fixtures.blank_png(tmp_path / "small.png", 180, 180)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuple(decode(small).shape) == (3, 180, 180)


def _lowered_limit(tmp: Path) -> dict[str, str]:
    """An environment whose Python processes (the loader's workers too, however they
    start) have ``Image.MAX_IMAGE_PIXELS`` = 20000: the fixture's images (at most
    120 x 120) are under it, a 180 x 180 one is in the warning band."""
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from PIL import Image\n\nImage.MAX_IMAGE_PIXELS = 20_000\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def _in_band(fx: Fixture) -> list[str]:
    """Two images in the lowered warning band, one per split; the warning lines (sorted)
    they should give."""
    train = fixtures.blank_png(fx.root / "train" / "cat" / "big.png", 180, 180)
    test = fixtures.blank_png(fx.root / "test" / "dog" / "big.png", 180, 170)
    return sorted(f"warning: {f}: {size}, over PIL's 0.02 Mpx decompression-bomb warning "
                  "size; each use decodes it in full (slow, memory-hungry): consider "
                  "downscaling it"
                  for f, size in ((train, "180x180 px (0.0324 Mpx)"),
                                  (test, "180x170 px (0.0306 Mpx)")))


def _with_workers(tmp_path: Path, root: Path, *extra: str) -> tuple[str, str]:
    """A successful run with two decoding worker processes: its stdout and stderr."""
    proc = subprocess.run([sys.executable, "-m", "harness.run",
                           *_args(tmp_path, root, *extra, "--workers", "2")],
                          cwd=ROOT, env=_lowered_limit(tmp_path), text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_check_data_in_worker_processes_says_pils_warning_once_per_file(
        tmp_path: Path) -> None:
    """PIL's raw ``DecompressionBombWarning`` came once from the header check and
    again from the decoding in each worker process."""
    fx = _folder(tmp_path)
    want = _in_band(fx)
    out, err = _with_workers(tmp_path, fx.root, "--check-data")
    assert sorted(err.splitlines()) == want, err
    assert "problems: none" in out


@pytest.mark.slow
def test_training_with_decoding_workers_says_pils_warning_once_per_file(
        tmp_path: Path) -> None:
    fx = _folder(tmp_path, TRAINABLE)
    want = _in_band(fx)
    _, err = _with_workers(tmp_path, fx.root)
    assert sorted(err.splitlines()) == want, err


def _damaged_png(path: Path) -> Path:
    """A PNG whose header reads but whose pixel data PIL refuses with a
    ``SyntaxError`` ("broken PNG file"; its image data chunk's length zeroed)."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buf, "PNG")
    blob = bytearray(buf.getvalue())
    at = blob.index(b"IDAT")
    blob[at - 4:at] = bytes(4)
    path.write_bytes(bytes(blob))
    return path


def test_any_error_pil_raises_on_damaged_pixels_is_a_listed_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not only OSError: a damaged PNG raises SyntaxError, which escaped the header
    check (reading a PNG's EXIF orientation loads it) and ``decode`` (an unexpected
    error, exit 1)."""
    fx = _folder(tmp_path)
    bad = _damaged_png(fx.root / "train" / "cat" / "broken.png")
    assert _main(tmp_path, fx.root, "--check-data") == 2
    cap = capsys.readouterr()
    assert "problems: 1" in cap.out
    assert f"{bad}: not a readable image (SyntaxError: broken PNG file" in cap.out
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: 1 problem(s)")
    for exif in (False, True):  # as a loader worker meets it
        with pytest.raises(DataError, match=r"broken.png: cannot decode the image "
                                            r"\(SyntaxError: broken PNG file"):
            decode(bad, exif)


# --------------------------------------------------------------------------------------
# text that is not UTF-8, byte-order marks, file names
# --------------------------------------------------------------------------------------


def test_a_boxes_file_that_is_not_utf8_is_one_line_naming_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = _folder(tmp_path)
    boxes = fx.root / "boxes.csv"
    lines = boxes.read_text().splitlines()
    lines.insert(3, "train/cat/café.jpg,1,1,5,5")
    boxes.write_bytes("\n".join(lines).encode("latin-1") + b"\n")  # é: the byte 0xe9
    assert _main(tmp_path, fx.root) == 2
    assert _one_line(capsys) == (f"error: {boxes}:4: not UTF-8 text (byte 0xe9); save the "
                                 "file as UTF-8")


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """As some editors save UTF-8: the boxes file's header used to read as
    ``\\ufeffpath``, a CUB index file's first id as ``\\ufeff1``."""
    fx = _folder(tmp_path)
    boxes = fx.root / "boxes.csv"
    boxes.write_bytes(codecs.BOM_UTF8 + boxes.read_bytes())
    s = data.build("folder", "train", data_dir=fx.root, image_size=32)
    assert [len(r.boxes) for r in s.dataset.records] == [  # type: ignore[attr-defined]
        len(im.boxes) for im in fx.split("train")]
    cub = fixtures.make_cub2011(tmp_path / "cub")
    for name in ("images.txt", "classes.txt", "bounding_boxes.txt"):
        f = cub.dataset_dir / name
        f.write_bytes(codecs.BOM_UTF8 + f.read_bytes())
    s = data.build("cub200-2011", "train", data_dir=cub.root, image_size=32)
    assert len(s) == len(cub.split("train"))


def test_an_index_file_that_is_not_utf8_is_one_line_naming_its_line(tmp_path: Path) -> None:
    """The other layouts' index files (read_lines) as the boxes file."""
    cub = fixtures.make_cub2010(tmp_path / "cub")
    classes = cub.dataset_dir / "lists" / "classes.txt"
    classes.write_bytes(classes.read_bytes() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        data.build("cub200-2010", "train", data_dir=cub.root, image_size=32)
    assert str(err.value) == (f"{classes}:4: not UTF-8 text (byte 0xe9); save the file as "
                              "UTF-8")


@pytest.mark.parametrize("where", ["image", "class folder"])
def test_a_name_that_is_not_utf8_is_one_line_asking_to_rename_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    """Its bytes are shown escaped (printing the name itself could fail); it used to
    fail hashing the split's file names (UnicodeEncodeError, exit 1)."""
    fx = _folder(tmp_path)
    jpg = (fx.root / "train" / "cat" / "cat_000.jpg").read_bytes()
    if where == "image":
        folder, name = fx.root / "train" / "cat", b"caf\xe9.jpg"
        _non_utf8(folder, name).write_bytes(jpg)
    else:
        folder, name = fx.root / "train", b"caf\xe9"
        _non_utf8(folder, name).mkdir()
        (_non_utf8(folder, name) / "a.jpg").write_bytes(jpg)
    assert _main(tmp_path, fx.root) == 2
    assert _one_line(capsys) == (f"error: {folder}: the name {name!r} is not valid UTF-8; "
                                 "rename it")
    assert _stopped_before_training(tmp_path)


# --------------------------------------------------------------------------------------
# --check-data: each problem listed once; quoted values cut
# --------------------------------------------------------------------------------------


def test_check_data_lists_each_problem_once_and_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The problems of the folder itself are listed with the images' (the split is
    summarised without what they concern); those both splits meet, once."""
    fx = _folder(tmp_path)
    train = fx.root / "train"
    (train / "empty").mkdir()
    (train / "loop").symlink_to("..")
    bomb = fixtures.blank_png(train / "cat" / "bomb.png", *BOMB)
    _non_utf8(train / "dog", b"caf\xe9.jpg").write_bytes((train / "dog" / "dog_000.jpg")
                                                         .read_bytes())
    assert _main(tmp_path, fx.root, "--check-data") == 2
    cap = capsys.readouterr()
    assert "train: 9 images, 3 of 4 classes present" in cap.out  # empty: a class, no images
    assert "test: 6 images, 3 of 4 classes present" in cap.out
    listed = [ln.strip() for ln in cap.out.splitlines() if ln.startswith("    /")]
    want = [f"{train / 'empty'}: a class folder with no images",
            f"{train / 'loop'}: a symlink to {fx.root}, a folder that holds it",
            f"{bomb}: 256 Mpx", f"{train / 'dog'}: the name b'caf\\xe9.jpg' is not valid UTF-8"]
    assert len(listed) == 4 and "problems: 4" in cap.out, cap.out
    assert all(sum(ln.startswith(w) for ln in listed) == 1 for w in want), listed
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: 4 problem(s)")


@pytest.mark.parametrize(("file", "text", "words"), [
    ("boxes.csv", "p" * 500 + "\n", "the header must be"),
    ("boxes.csv", "path,x1,y1,x2,y2\ntrain/cat/cat_000.jpg,1,1," + "x" * 500 + ",5\n",
     "boxes.csv:2: the coordinates must be numbers"),
    ("images.txt", "1 " + "a/" * 300 + " b\n", "images.txt:1: expected an id and 1 value"),
])
def test_file_contents_quoted_in_an_error_are_cut(tmp_path: Path, file: str, text: str,
                                                  words: str) -> None:
    if file == "boxes.csv":
        fx = _folder(tmp_path)
        (fx.root / file).write_text(text)
    else:
        fx = fixtures.make_cub2011(tmp_path / "cub")
        (fx.dataset_dir / file).write_text(text)
    with pytest.raises(DataError) as err:
        data.build(fx.name, "train", data_dir=fx.root, image_size=32)
    msg = str(err.value)
    assert words in msg and "characters)" in msg and len(msg) < 250, msg
