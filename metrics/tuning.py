"""How many perturbed images go through one forward pass of the causal metrics.

The batch decides their speed, not their scores (each image's forward pass is
independent of the others' in eval mode; kernels chosen by batch size may differ by
float rounding, ~1e-7). A cache-friendly batch is several times faster per image on a
CPU than a large one, a GPU wants the largest that fits, and on a busy machine any
single timing lies: a burst of load during one pass made a one-shot search pick 256 or
512 images where 16-32 are best.

So the batch is chosen from the scoring passes themselves, while they run
(:class:`BatchTuner`). Load only ever slows a pass down, so the least time per image of
several passes is what a size can do, provided the sizes compared were timed under the
same load: now and then the tuner runs three passes at a neighbouring size (half or
double), each followed by a pass at the size in use, and compares the least time per
image on each side. A neighbour found faster by more than 10 % is tried once more at
once (a burst that began halfway must not decide) and, faster again, becomes the size
in use; the next trial goes the same way. A trial that finds nothing makes the next one
wait twice as long. On a GPU a larger neighbour that is not slower is taken, so the
batch grows to the largest that fits and pays. Trial passes score their images like any
other: what they cost is the time they took beyond the size in use's pace, and no trial
starts while that is more than ``share`` (3 %) of all the passes' time. A pass that runs
out of GPU memory is run again at a smaller size, and no size as large is tried again.

:func:`choose_batch` picks one size up front, for an engine specialised to one shape
(``torch.compile``): the same tuner, run on copies of one image until it settles.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: the sizes a forward batch may take (a GPU may go further, :func:`candidates`)
BATCH_CANDIDATES = (8, 16, 32, 64, 128, 256, 512)
#: bytes the perturbed images of the passes in flight may take (all streams together)
MEMORY_BUDGET = 512 * 2**20
#: the largest sizes tried on a GPU, within the budget and the memory it has
GPU_CANDIDATES = (*BATCH_CANDIDATES, 1024, 2048)
#: where the tuner starts: mid-range on a CPU (16-64 are best there for the default
#: backbone and resnet18), larger on a GPU, from which it only climbs while that pays
START = {"cpu": 32, "cuda": 128}
#: what the trial passes may cost, as a share of all the passes' time
SHARE = 0.03
#: how much faster (per image) a neighbour must be to move there
MARGIN = 0.10

Clock = Callable[[], float]
Model = Callable[[torch.Tensor], torch.Tensor]


def candidates(sample: torch.Tensor, budget: int = MEMORY_BUDGET, streams: int = 1
               ) -> tuple[int, ...]:
    """The batch sizes for inputs like ``sample`` ``[C,H,W]``: those whose perturbed
    images, times ``streams`` passes in flight, fit ``budget`` bytes (on a GPU also a
    quarter of its free memory, the rest being the model's activations); the smallest
    always."""
    per_image = sample.numel() * sample.element_size() * max(1, streams)
    sizes: tuple[int, ...] = BATCH_CANDIDATES
    if sample.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(sample.device)
        budget = min(budget * 4, free // 4)
        sizes = GPU_CANDIDATES
    return tuple(b for b in sizes if b == sizes[0] or b * per_image <= budget)


def start_size(sizes: Sequence[int], device: torch.device) -> int:
    """The tuner's first size: :data:`START` for the device kind, within ``sizes``."""
    want = START.get(device.type, START["cpu"])
    return max([s for s in sizes if s <= want] or [min(sizes)])


class BatchTuner:
    """The forward batch of the causal passes, adapted to their measured pace.

    Call :meth:`size` before a pass and :meth:`observe` after it (from any thread: the
    passes of several streams share one tuner). Not ``adaptive``: always ``start``.

    Args:
        sizes: the sizes it may use (:func:`candidates`).
        start: the first size.
        prefer_large: move to a larger neighbour when it is not slower (a GPU), not only
            when it is clearly faster.
        share: what trial passes may cost, as a share of all passes' time.
        margin: how much faster per image a neighbour must be to move there.
        window: the passes at the size in use whose least time per image is its pace.
        period: passes at the size in use before the first trial of a neighbour; it
            doubles (up to 64) after each trial that found nothing better.
        trial_passes: passes at the neighbour in one round of a trial (its least time
            per image against the least of as many at the current size between them).
        clock: seconds (a fake one in tests).
    """

    def __init__(self, sizes: Sequence[int], start: int, *, adaptive: bool = True,
                 prefer_large: bool = False, share: float = SHARE, margin: float = MARGIN,
                 window: int = 4, period: int = 4, trial_passes: int = 3,
                 clock: Clock = time.perf_counter) -> None:
        self.sizes = sorted(set(sizes))
        if start not in self.sizes:
            raise ValueError(f"start {start} is not among the sizes {self.sizes}")
        self.start = start
        self.adaptive = adaptive and len(self.sizes) > 1
        self.prefer_large = prefer_large
        self.share, self.margin, self.period = share, margin, period
        self.trial_passes = trial_passes
        self.clock = clock
        self.current = start
        self.passes: Counter[int] = Counter()  # passes run at each size
        self.images: Counter[int] = Counter()  # images scored at each size
        self.switches = 0
        self._lock = threading.Lock()
        self._pace: deque[float] = deque(maxlen=window)  # s/image, last passes at current
        self._trial: int | None = None  # the neighbour on trial
        self._trial_runs = 0  # its passes handed out in this trial
        self._trial_pace: list[float] = []  # and their s/image
        self._beside: list[float] = []  # s/image of the current size's passes meanwhile
        self._left: int | None = None  # the size the last move left (it was slower)
        self._confirming = False  # the trial's second round (the first found it faster)
        self._fails = 0  # trials in a row that found no faster neighbour
        self._between = 0  # passes at the current size since the last trial pass
        self._since = 0  # passes at the current size since the last trial
        self._gap = period
        self._up = True  # the direction of the next trial (flips each time)
        self._spent = 0.0  # seconds of all timed passes
        self._waste = 0.0  # seconds trial passes took beyond the current size's pace

    # -- what the passes call ------------------------------------------------------
    def size(self, rows: int | None = None, left: int | None = None) -> int:
        """The size of the next pass: the one in use, or a neighbour on trial. ``rows``:
        all a call has (a trial larger than that could not be timed: it ends as one that
        found nothing); ``left``: what is left of them (a trial larger waits for the
        next call, so that its passes are full)."""
        with self._lock:
            if not self.adaptive:
                return self.current
            if self._trial is None and self._due():
                self._trial = self._neighbour()
                self._trial_runs, self._trial_pace, self._beside = 0, [], []
            if self._trial is not None and rows is not None and self._trial > rows:
                self._trial, self._confirming = None, False
                self._trial_pace, self._beside = [], []
                self._since, self._fails = 0, self._fails + 1
                self._gap = min(2 * self._gap, 64)
            # a trial's two passes go between passes at the current size
            if self._trial is not None and self._trial_runs < self.trial_passes and (
                    self._trial_runs == 0 or self._between > 0) and (
                    left is None or self._trial <= left):
                self._trial_runs += 1
                self._between = 0
                return self._trial
            return self.current

    def unused(self, size: int) -> None:
        """A size handed out by :meth:`size` was not run (no work was left)."""
        with self._lock:
            self._untrial(size)

    def _untrial(self, size: int) -> None:
        if size == self._trial and self._trial_runs > 0:
            self._trial_runs -= 1  # handed out again later

    def observe(self, size: int, images: int, seconds: float) -> None:
        """One pass of ``images`` images at ``size`` took ``seconds`` (a short last
        pass counts as scored, not as a pace)."""
        with self._lock:
            self.passes[size] += 1
            self.images[size] += images
            if not self.adaptive or size not in self.sizes:
                return
            self._spent += seconds
            if images < size:  # no pace; a trial pass is run again
                self._untrial(size)
                return
            pace = seconds / images
            if size == self.current:
                self._pace.append(pace)
                self._since += 1
                self._between += 1
                if self._trial is not None:
                    self._beside.append(pace)
            elif size == self._trial:
                self._trial_pace.append(pace)
            if self._trial is not None and len(self._trial_pace) == self.trial_passes \
                    and len(self._beside) >= self.trial_passes:
                self._judge()

    def too_big(self, size: int) -> int:
        """A pass at ``size`` ran out of memory: that size and larger ones are dropped;
        returns the size to use now.

        Raises:
            torch.cuda.OutOfMemoryError: ``size`` was already the smallest.
        """
        with self._lock:
            smaller = [s for s in self.sizes if s < size]
            if not smaller:
                raise torch.cuda.OutOfMemoryError(
                    f"a forward pass of {size} perturbed images does not fit in memory; "
                    "free some, or score fewer or smaller images")
            self.sizes = smaller
            if self.current >= size:
                self.current = smaller[-1]
                self._pace.clear()
            if self._trial is not None and self._trial >= size:
                self._trial, self._confirming = None, False
            self.adaptive = self.adaptive and len(self.sizes) > 1
            return self.current

    # -- the decisions -------------------------------------------------------------
    def _due(self) -> bool:
        return (len(self._pace) >= 2 and self._since >= self._gap
                and self._waste <= self.share * self._spent)

    def _neighbour(self) -> int | None:
        i = self.sizes.index(self.current)
        down = self.sizes[i - 1] if i > 0 else None
        up = self.sizes[i + 1] if i + 1 < len(self.sizes) else None
        first, other = (up, down) if self._up else (down, up)
        self._up = not self._up
        if first is None or (first == self._left and other is not None
                             and self._gap < 4 * self.period):
            return other  # not straight back to the size just left (it was slower)
        return first

    def _judge(self) -> None:
        """Two trial passes are in, and two at the current size ran between and after
        them (the same load on both sides). A neighbour that is faster runs a second
        such round at once (a burst of load that began during the first must not
        decide); faster in both, it becomes the size in use. Otherwise the next trial
        waits twice as long."""
        n = self._trial
        assert n is not None
        theirs, ours = min(self._trial_pace), min(self._beside)
        # what the trial passes took beyond the current size's pace (bursts of load
        # would have slowed any pass: the least paces on both sides are compared)
        self._waste += max(0.0, theirs - ours) * n * len(self._trial_pace)
        better = theirs < ours * (1 - self.margin) or (
            self.prefer_large and n > self.current and theirs <= ours)
        paces, self._trial_pace, self._beside = self._trial_pace, [], []
        if better and not self._confirming:
            self._confirming = True  # the same neighbour again, at once
            self._trial_runs = 0
            return
        self._confirming = False
        self._trial = None
        self._since = 0
        if better:
            self._up = n > self.current  # the same way next: the optimum may lie further
            self._left, self.current = self.current, n
            self.switches += 1
            self._fails = 0
            self._pace.clear()
            self._pace.extend(paces)
            self._gap = self.period
        else:
            self._gap = min(2 * self._gap, 64)
            self._fails += 1

    @property
    def settled(self) -> bool:
        """Two trials in a row found no faster neighbour (or there is none to try)."""
        with self._lock:
            return not self.adaptive or self._fails >= 2

    # -- what is recorded ----------------------------------------------------------
    def usage(self) -> dict[int, int]:
        """Images scored at each size so far."""
        with self._lock:
            return dict(self.images)

    def cost(self) -> float:
        """What the trial passes cost, as a share of all passes' time (0: none timed)."""
        with self._lock:
            return self._waste / self._spent if self._spent else 0.0


def summary(before: dict[int, int], after: dict[int, int]) -> dict[str, Any]:
    """What the passes between two :meth:`BatchTuner.usage` snapshots used: the size
    that scored most images (``forward_batch``) and the images at each size."""
    used = {s: after.get(s, 0) - before.get(s, 0) for s in sorted(after)}
    used = {s: n for s, n in used.items() if n > 0}
    if not used:
        return {}
    return {"forward_batch": max(used, key=lambda s: (used[s], s)), "images_per_batch": used}


_CHOSEN: dict[tuple[object, ...], int] = {}
_TUNERS: dict[tuple[object, ...], BatchTuner] = {}


def tuner_for(key: tuple[object, ...], make: Callable[[], BatchTuner]) -> BatchTuner:
    """The tuner of one model kind in this process (``make`` builds it the first time):
    models of a kind evaluated one after another go on where the last one left off."""
    if key not in _TUNERS:
        _TUNERS[key] = make()
    return _TUNERS[key]


def choose_batch(model: Model, sample: torch.Tensor, key: tuple[object, ...] = (),
                 budget: int = MEMORY_BUDGET, *, max_passes: int = 200,
                 clock: Clock = time.perf_counter) -> int:
    """One forward batch for ``model`` on inputs like ``sample`` ``[C,H,W]``, for an
    engine specialised to one shape; measured once per ``key`` (model kind, device,
    precision) and input shape.

    A :class:`BatchTuner` run on copies of ``sample`` (after a warm-up pass at each
    size) until it has settled: two trials in a row found no faster neighbour (or
    ``max_passes`` passes). So each size is judged against passes timed between its own,
    under the same load, as while scoring.
    """
    full_key = (*key, tuple(sample.shape), str(sample.device), str(sample.dtype))
    if full_key in _CHOSEN:
        return _CHOSEN[full_key]
    sizes = candidates(sample, budget)
    gpu = sample.device.type == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    tuner = BatchTuner(sizes, start_size(sizes, sample.device), prefer_large=gpu,
                       period=1, share=1.0, clock=clock)
    warm: set[int] = set()
    with torch.inference_mode():
        for _ in range(max_passes):
            if tuner.settled:
                break
            size = tuner.size()
            x = sample.expand(size, *sample.shape).contiguous()
            try:
                if size not in warm:
                    model(x)  # warm-up (allocations, kernel selection)
                    warm.add(size)
                sync()
                t0 = clock()
                model(x)
                sync()
            except torch.cuda.OutOfMemoryError:
                tuner.too_big(size)
                continue
            tuner.observe(size, size, clock() - t0)
    _CHOSEN[full_key] = tuner.current
    return tuner.current


def choose_streams(batch: int, sample: torch.Tensor, budget: int = MEMORY_BUDGET) -> int:
    """Concurrent forward passes for the causal curves on ``sample``'s device: on a CPU
    one per intra-op thread, as many as fit ``budget`` bytes of perturbed images at
    ``batch`` images a pass (at least one); elsewhere one."""
    if sample.device.type != "cpu":
        return 1
    per_pass = batch * sample.numel() * sample.element_size()
    return max(1, min(torch.get_num_threads(), budget // max(1, per_pass)))
