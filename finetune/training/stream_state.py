"""Where a streamed run stands, kept in each checkpoint's ``trainer_state.json``: the lanes its epochs are dealt to and the unreadable images met so far; and the stream restarted at a resumed step."""

from __future__ import annotations

import json
import logging
import os

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from finetune import data
from finetune.data.streaming.stream import ImageStream

logger = logging.getLogger("finetune")


#: A split of unknown size: its unreadable share is of the images read so far, judged only
#: once this many were read (a share of the first few batches says little of the rest).
MIN_READ = 1000


class BadImages:
    """The unreadable images a streamed run met, by split, as the data report lists them;
    the run stops when a split's share passes ``data.max_bad_fraction``. A split whose
    total is None (shards of unknown sizes) is judged on the images read so far."""

    def __init__(self, totals: dict[str, int | None], limit: float) -> None:
        self.totals, self.limit = totals, limit
        self.found: dict[tuple[str, str], str] = {}
        #: Images read so far, of each split of unknown size.
        self.read: dict[str, int] = {}

    def count(self, split: str, images: int) -> None:
        """``images`` more read from ``split`` (counted only where its size is unknown)."""
        if split in self.totals and self.totals[split] is None:
            self.read[split] = self.read.get(split, 0) + images

    def add(self, entries: list[list[str]]) -> None:
        for split, key, reason in entries:
            if (split, key) not in self.found:
                self.found[(split, key)] = reason
                if len(self.found) <= 20:
                    logger.warning("data: set aside %s (%s) in '%s'", key, reason, split)
        self.check()

    def check(self) -> None:
        counts: dict[str, int] = {}
        for split, _ in self.found:
            counts[split] = counts.get(split, 0) + 1
        for split, bad in counts.items():
            total = self.totals.get(split, 0)
            if total is None:
                total = self.read.get(split, 0)
                if total < MIN_READ:
                    continue
            if total and bad / total > self.limit:
                first = next((k, r) for (s, k), r in self.found.items() if s == split)
                raise data.DataError(
                    f"data: {bad} of {total} images in '{split}' cannot be read so far ({100 * bad / total:.1f}% > "
                    f"data.max_bad_fraction {self.limit:g}), e.g. {first[0]}: {first[1]}; fix or remove them, or "
                    "raise data.max_bad_fraction"
                )

    def entries(self) -> list[list[str]]:
        return [[split, key, reason] for (split, key), reason in self.found.items()]



class StreamState(TrainerCallback, ExportableState):
    """A streamed run's state beside the Trainer's own in each checkpoint.

    The Trainer writes its callbacks' ``state()`` into ``trainer_state.json``, the last file
    of a checkpoint, so a checkpoint that counts as complete holds it too; a separate file
    could be missing after a kill -9 between the two writes. The position in the stream is
    not stored: it follows from the checkpoint's step (every process makes the same number
    of batches per epoch, see ``finetune.data.streaming.plan``), exactly as the Trainer's own
    data skipping computes it; what is stored is what the position means, the lanes
    (loader workers) each epoch was dealt to, which a resumed run keeps whatever its worker
    count, and the unreadable images found so far.
    """

    def __init__(
        self, train: ImageStream | None = None, bad: BadImages | None = None, ignore_data_skip: bool = False
    ) -> None:
        self.train = train
        self.bad = bad if bad is not None else BadImages({}, 1.0)
        #: The recipe's ``training.ignore_data_skip``: a resumed epoch starts from its first batch.
        self.ignore_data_skip = ignore_data_skip

    def state(self) -> dict:
        return {
            "args": {},
            "attributes": {
                "lanes": self.train.lanes if self.train is not None else 1,
                "bad_images": self.bad.entries(),
                "images_read": self.bad.read,
            },
        }

    def read(self, images: int) -> None:
        """A training batch of ``images`` (the unreadable ones included) was read."""
        if self.train is not None:
            self.bad.count(self.train.split.name, images)

    def resume(self, trainer, checkpoint: str) -> None:
        """Start the train stream at ``checkpoint``'s step, dealt to the lanes it was dealt to."""
        path = os.path.join(checkpoint, "trainer_state.json")
        if self.train is None or not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        mine = saved.get("stateful_callbacks", {}).get(type(self).__name__, {}).get("attributes", {})
        lanes = int(mine.get("lanes", self.train.lanes))
        if lanes != self.train.lanes:
            logger.info(
                "data: resuming with the %d loader worker(s) the run started with (not %d): each epoch's batches are "
                "dealt to them", lanes, self.train.lanes,
            )
            self.train.lanes = lanes
            trainer.args.dataloader_num_workers = lanes if trainer.args.dataloader_num_workers else 0
        for split, key, reason in mine.get("bad_images", []):
            self.bad.found[(split, key)] = reason
        self.bad.read.update({split: int(n) for split, n in mine.get("images_read", {}).items()})
        args = trainer.args
        step = int(saved.get("global_step", 0))
        if self.train.endless:
            # No epochs: the Trainer's one "epoch" is all of training.max_steps.
            skip = 0 if self.ignore_data_skip else step * args.gradient_accumulation_steps
            self.train.load_state_dict({"epoch": 0, "batch": skip, "lanes": lanes})
            logger.info("data: the stream resumes at batch %d (its rows before that are read again, not decoded)", skip)
            return
        batches = self.train.num_batches
        per_epoch = max(batches // args.gradient_accumulation_steps + int(batches % args.gradient_accumulation_steps > 0), 1)
        epoch, within = divmod(step, per_epoch)
        skip = 0 if self.ignore_data_skip else within * args.gradient_accumulation_steps
        self.train.load_state_dict({"epoch": epoch, "batch": min(skip, batches), "lanes": lanes})
        logger.info("data: the stream resumes at epoch %d, batch %d of %d", epoch, skip, batches)
