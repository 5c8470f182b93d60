"""User studies of style methods, after the style paper's Fig. 9: for each prompt and reference, raters pick
the best of several methods' images per criterion (prompt fidelity, style fidelity).

One study is one SQLite file (``<studies>/<name>.sqlite``) holding its items (prompt, reference PNG, one PNG
per method) and its votes, so a study can be copied, archived or analysed on its own. The file is in WAL
mode with ``synchronous=FULL``: a vote whose transaction committed survives the server being killed (and the
machine losing power) the moment the rater's page says it was recorded.

- Raters see each item's images in a random order drawn from ``(study seed, rater, item)``, labelled A, B,
  C..., the method names hidden; a vote names labels, mapped back to methods on the server.
- One ballot per rater and item: both criteria in one transaction, ``UNIQUE(rater, item, criterion)``.
- Tally: each method's share of the votes per criterion with a percentile bootstrap 95% CI over the
  votes (:data:`BOOTSTRAP_RESAMPLES` resamples, seed :data:`BOOTSTRAP_SEED`).
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

CRITERIA: Mapping[str, str] = {
    "prompt": "Which image shows the prompt best? (prompt fidelity)",
    "style": "Which image matches the reference's style best? (style fidelity)",
}
"""Criterion name -> the question raters answer (the paper's two)."""

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
SUFFIX = ".sqlite"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    reference BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    item_id INTEGER NOT NULL REFERENCES items(id),
    method TEXT NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (item_id, method)
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,
    rater TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items(id),
    criterion TEXT NOT NULL,
    method TEXT NOT NULL,
    at TEXT NOT NULL,
    UNIQUE (rater, item_id, criterion)
);
"""


class StudyError(ValueError):
    """A user-facing study error (bad name, missing study, repeated vote): one line."""


class AlreadyVoted(StudyError):
    """The rater has voted on this item already."""


@dataclass(frozen=True)
class StudyItem:
    """What raters judge: a prompt, a reference image and one image per method."""

    key: str
    prompt: str
    reference: Image.Image
    images: Mapping[str, Image.Image]


@dataclass(frozen=True)
class Shown:
    """One item as one rater sees it: the images in that rater's order, labelled A, B, C..."""

    item_id: int
    position: int
    total: int
    prompt: str
    reference: Image.Image
    labels: tuple[str, ...]
    images: tuple[Image.Image, ...]


@dataclass(frozen=True)
class Share:
    """One method's votes on one criterion, with the bootstrap 95% CI of its share."""

    criterion: str
    method: str
    votes: int
    total: int
    share: float
    ci_low: float
    ci_high: float


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise StudyError(
            f"study name {name!r}: use 1-64 letters, digits, '-' or '_' (starting with a letter or digit)"
        )
    return name


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def _labels(n: int) -> tuple[str, ...]:
    return tuple(chr(ord("A") + i) for i in range(n))


class Study:
    """One study file. Every call opens its own connection, so one object serves any number of threads
    (the web server's workers) and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SUFFIX)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.path.is_file():
            raise StudyError(f"no study {self.name!r} at {self.path}")
        with closing(_open(self.path)) as conn:
            yield conn

    @classmethod
    def create(
        cls,
        folder: str | Path,
        name: str,
        items: Sequence[StudyItem],
        *,
        seed: int = 0,
        source: str = "",
    ) -> Study:
        """A new study file ``folder/name.sqlite`` with ``items`` (every item with the same methods, at
        least two, and a key of its own). An existing study of that name is refused."""
        check_name(name)
        if not items:
            raise StudyError("a study needs at least one item")
        methods = sorted(items[0].images)
        if len(methods) < 2:
            raise StudyError(f"a study compares at least two methods, got {methods}")
        for item in items:
            if sorted(item.images) != methods:
                raise StudyError(f"item {item.key!r} has methods {sorted(item.images)}, not {methods}")
        if len({item.key for item in items}) != len(items):
            raise StudyError("two study items share a key")
        folder = Path(folder)
        if not folder.is_dir():
            raise StudyError(f"studies folder {folder} does not exist")
        path = folder / f"{name}{SUFFIX}"
        if path.exists():
            raise StudyError(f"study {name!r} exists already ({path}); choose another name")
        # written under a temporary name and renamed, so a half-made study is never listed
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            with closing(_open(tmp)) as conn, conn:
                meta = {
                    "name": name,
                    "seed": str(seed),
                    "methods": json.dumps(methods),
                    "source": source,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                for item in items:
                    cur = conn.execute(
                        "INSERT INTO items (key, prompt, reference) VALUES (?, ?, ?)",
                        (item.key, item.prompt, _png(item.reference)),
                    )
                    conn.executemany(
                        "INSERT INTO images VALUES (?, ?, ?)",
                        [(cur.lastrowid, m, _png(img)) for m, img in item.images.items()],
                    )
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)
            for side in ("-wal", "-shm"):
                tmp.with_name(tmp.name + side).unlink(missing_ok=True)
        return cls(path)

    def _meta(self, conn: sqlite3.Connection) -> dict[str, str]:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    @property
    def methods(self) -> tuple[str, ...]:
        with self._connect() as conn:
            return tuple(json.loads(self._meta(conn)["methods"]))

    def __len__(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def order(self, rater: str, item_id: int) -> tuple[str, ...]:
        """The methods in the order ``rater`` sees them on item ``item_id`` (labels A, B, ... in turn)."""
        with self._connect() as conn:
            seed = self._meta(conn)["seed"]
        methods = list(self.methods)
        random.Random(f"{seed}:{rater}:{item_id}").shuffle(methods)
        return tuple(methods)

    def next_item(self, rater: str) -> Shown | None:
        """The next item ``rater`` has not voted on (items in an order of the rater's own), or None when
        the rater has voted on all."""
        _check_rater(rater)
        with self._connect() as conn:
            seed = self._meta(conn)["seed"]
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM items ORDER BY id")]
            done = {
                int(r[0])
                for r in conn.execute("SELECT DISTINCT item_id FROM votes WHERE rater = ?", (rater,))
            }
            random.Random(f"{seed}:{rater}").shuffle(ids)
            todo = [i for i in ids if i not in done]
            if not todo:
                return None
            item_id = todo[0]
            prompt, ref = conn.execute(
                "SELECT prompt, reference FROM items WHERE id = ?", (item_id,)
            ).fetchone()
            pngs = dict(conn.execute("SELECT method, png FROM images WHERE item_id = ?", (item_id,)))
        order = self.order(rater, item_id)
        return Shown(
            item_id,
            len(done) + 1,
            len(ids),
            prompt,
            _image(ref),
            _labels(len(order)),
            tuple(_image(pngs[m]) for m in order),
        )

    def vote(self, rater: str, item_id: int, picks: Mapping[str, str]) -> None:
        """Record ``rater``'s ballot on ``item_id``: ``picks`` maps every criterion to a label (A, B, ...).
        All criteria are written in one transaction; a second ballot on the item raises
        :class:`AlreadyVoted`."""
        _check_rater(rater)
        for criterion in CRITERIA:
            if not picks.get(criterion):
                raise StudyError(f"pick one image for {criterion} fidelity")
        extra = sorted(set(picks) - set(CRITERIA))
        if extra:
            raise StudyError(f"unknown criteria {extra}; the criteria are {list(CRITERIA)}")
        order = self.order(rater, item_id)
        labels = _labels(len(order))
        bad = sorted({v for v in picks.values() if v not in labels})
        if bad:
            raise StudyError(f"labels {bad} are not among the item's images {list(labels)}")
        at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._connect() as conn:
            if conn.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise StudyError(f"study {self.name!r} has no item {item_id}")
            try:
                with conn:
                    conn.executemany(
                        "INSERT INTO votes (rater, item_id, criterion, method, at) VALUES (?, ?, ?, ?, ?)",
                        [(rater, item_id, c, order[labels.index(picks[c])], at) for c in CRITERIA],
                    )
            except sqlite3.IntegrityError:
                raise AlreadyVoted(f"you have voted on item {item_id} of {self.name!r} already") from None

    def votes(self) -> list[tuple[str, int, str, str]]:
        """Every vote as (rater, item id, criterion, method), in the order they were cast."""
        with self._connect() as conn:
            rows = conn.execute("SELECT rater, item_id, criterion, method FROM votes ORDER BY id").fetchall()
        return [(str(r), int(i), str(c), str(m)) for r, i, c, m in rows]

    def tally(self, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[Share]:
        """Each method's share of the votes per criterion, with a percentile bootstrap 95% CI (the votes of
        a criterion resampled with replacement ``resamples`` times)."""
        if resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {resamples}")
        methods = self.methods
        votes = self.votes()
        rng = np.random.default_rng(seed)
        out = []
        for criterion in CRITERIA:
            picked = np.array([methods.index(m) for _, _, c, m in votes if c == criterion], dtype=np.int64)
            n = len(picked)
            counts = np.bincount(picked, minlength=len(methods))
            if n:
                draws = rng.integers(0, n, size=(resamples, n))
                boot = np.stack([(picked[draws] == k).mean(axis=1) for k in range(len(methods))])
                low, high = np.percentile(boot, [2.5, 97.5], axis=1)
            else:
                low = high = np.zeros(len(methods))
            for k, method in enumerate(methods):
                share = counts[k] / n if n else 0.0
                out.append(
                    Share(criterion, method, int(counts[k]), n, float(share), float(low[k]), float(high[k]))
                )
        return out

    def csv(self, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> str:
        """The tally as CSV: criterion, method, votes, total, share, ci_low, ci_high, resamples."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for s in self.tally(resamples=resamples, seed=seed):
            shares = (f"{s.share:.4f}", f"{s.ci_low:.4f}", f"{s.ci_high:.4f}")
            writer.writerow([s.criterion, s.method, s.votes, s.total, *shares, resamples])
        return buf.getvalue()


CSV_COLUMNS = ("criterion", "method", "votes", "total", "share", "ci_low", "ci_high", "resamples")


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0)
    # WAL lets raters vote while others read; FULL fsyncs the log at every commit, so a committed vote
    # outlives a kill of the server (NORMAL, WAL's usual pairing, may lose the last commits on power loss)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(_SCHEMA)
    return conn


def _check_rater(rater: str) -> None:
    if not rater.strip():
        raise StudyError("a rater needs a name or a session id")


def list_studies(folder: str | Path) -> list[str]:
    """The studies in ``folder``, by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(SUFFIX) for p in folder.glob(f"*{SUFFIX}") if _NAME.match(p.stem))


def open_study(folder: str | Path, name: str) -> Study:
    """The study ``name`` in ``folder`` (a missing one is a :class:`StudyError`)."""
    study = Study(Path(folder) / f"{check_name(name)}{SUFFIX}")
    if not study.path.is_file():
        raise StudyError(f"no study {name!r} in {folder}")
    return study


# -- making studies ----------------------------------------------------------------------------------------


def items_from_evaluation(run_dir: str | Path, methods: Sequence[str] | None = None) -> list[StudyItem]:
    """One item per (content, style, seed) of an `evaluate` run folder (``rows.jsonl`` and its images):
    the content prompt, the case's reference and each method's image. ``methods`` None takes every method
    of the run; cases missing a method's image are left out."""
    from scalestyle.eval.protocols import Case

    run = Path(run_dir)
    log = run / "rows.jsonl"
    if not log.is_file():
        raise StudyError(f"{run} is no `scalestyle evaluate` folder: it has no rows.jsonl")
    rows = []
    for line in log.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a last line cut short by a killed run
    found = sorted({r["method"] for r in rows})
    chosen = list(methods) if methods else found
    missing = sorted(set(chosen) - set(found))
    if missing:
        raise StudyError(f"{run} has no images of method(s) {missing}; it has {found}")
    cases: dict[tuple[str, str, int], dict[str, dict[str, object]]] = {}
    for row in rows:
        if row["method"] in chosen:
            cases.setdefault((row["content"], row["style"], int(row["seed"])), {})[row["method"]] = row
    items = []
    for (content, style, seed), by_method in cases.items():
        if set(by_method) != set(chosen):
            continue
        any_row = next(iter(by_method.values()))
        fields = ("prompt", "content_prompt", "style_prompt", "ref_content", "ref_file")
        case = Case(str(any_row["protocol"]), content, style, seed, **{f: any_row.get(f) for f in fields})  # type: ignore[arg-type]
        images = {}
        for method, row in by_method.items():
            with Image.open(run / str(row["image"])) as img:
                images[method] = img.convert("RGB")
        items.append(StudyItem(f"{content}|{style}|{seed}", case.content_prompt, case.reference(), images))
    if not items:
        raise StudyError(f"{run} has no case with images of every method of {chosen}")
    return items


MethodRunner = Callable[[str, str, Image.Image, int], Image.Image]
"""``run(method, prompt, reference, seed) -> image``: how :func:`items_from_methods` makes an image."""


def items_from_methods(
    prompts: Sequence[str],
    references: Sequence[Image.Image],
    methods: Sequence[str],
    run: MethodRunner,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[StudyItem]:
    """One item per (prompt, reference): each method's image made by ``run`` with ``seed``."""
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise StudyError("give at least one prompt (one a line)")
    if not references:
        raise StudyError("give at least one reference image")
    if len(set(methods)) < 2:
        raise StudyError(f"a study compares at least two methods, got {list(methods)}")
    total, done, items = len(prompts) * len(references) * len(methods), 0, []
    for r, ref in enumerate(references):
        for p, prompt in enumerate(prompts):
            images = {}
            for method in methods:
                images[method] = run(method, prompt, ref, seed)
                done += 1
                if progress is not None:
                    progress(done, total)
            items.append(StudyItem(f"p{p}|r{r}|{seed}", prompt, ref, images))
    return items
