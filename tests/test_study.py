"""The study store (scalestyle.ui.study): one ballot per rater and item, tally and bootstrap CI, CSV, WAL,
and a committed vote surviving a hard kill of the writing process."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from scalestyle.metadata import write_png
from scalestyle.ui.study import (
    BOOTSTRAP_RESAMPLES,
    CSV_COLUMNS,
    AlreadyVoted,
    Study,
    StudyError,
    StudyItem,
    items_from_evaluation,
    items_from_methods,
    list_studies,
    open_study,
)

METHODS = ("d", "prompt-only", "stylealigned")


def _img(color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (8, 8), color)


def _items(n: int = 3) -> list[StudyItem]:
    colors = {"d": (255, 0, 0), "prompt-only": (0, 255, 0), "stylealigned": (0, 0, 255)}
    return [
        StudyItem(f"k{i}", f"prompt {i}", _img((i, i, i)), {m: _img(colors[m]) for m in METHODS})
        for i in range(n)
    ]


def _vote_for(study: Study, rater: str, item_id: int, prompt: str, style: str) -> None:
    order = study.order(rater, item_id)
    labels = "ABC"
    study.vote(rater, item_id, {"prompt": labels[order.index(prompt)], "style": labels[order.index(style)]})


def test_create_list_and_refuse_bad_names(tmp_path: Path) -> None:
    study = Study.create(tmp_path, "s1", _items(), seed=3)
    assert list_studies(tmp_path) == ["s1"]
    assert len(study) == 3 and study.methods == tuple(sorted(METHODS))
    with pytest.raises(StudyError, match="exists already"):
        Study.create(tmp_path, "s1", _items())
    with pytest.raises(StudyError, match="study name"):
        Study.create(tmp_path, "../x", _items())
    with pytest.raises(StudyError, match="at least two methods"):
        Study.create(tmp_path, "s2", [StudyItem("k", "p", _img((0, 0, 0)), {"d": _img((1, 1, 1))})])
    with pytest.raises(StudyError, match="no study"):
        open_study(tmp_path, "nope")


def test_order_is_seeded_per_rater_and_item_and_hides_names(tmp_path: Path) -> None:
    study = Study.create(tmp_path, "s", _items(6))
    assert study.order("r1", 1) == study.order("r1", 1)
    orders = {study.order(f"r{i}", item) for i in range(8) for item in range(1, 7)}
    assert len(orders) > 1  # not one fixed order for everyone
    shown = study.next_item("r1")
    assert shown is not None and shown.labels == ("A", "B", "C")
    order = study.order("r1", shown.item_id)
    reds = [i for i, im in enumerate(shown.images) if im.getpixel((0, 0)) == (255, 0, 0)]
    assert reds == [order.index("d")]  # the images come in that rater's order


def test_one_ballot_per_rater_and_item(tmp_path: Path) -> None:
    study = Study.create(tmp_path, "s", _items())
    _vote_for(study, "alice", 1, "d", "stylealigned")
    with pytest.raises(AlreadyVoted, match="voted on item 1"):
        study.vote("alice", 1, {"prompt": "A", "style": "A"})
    _vote_for(study, "bob", 1, "d", "d")  # another rater may
    assert len(study.votes()) == 4
    with pytest.raises(StudyError, match="pick one image for style"):
        study.vote("carol", 1, {"prompt": "A"})
    with pytest.raises(StudyError, match="labels"):
        study.vote("carol", 1, {"prompt": "A", "style": "Z"})
    assert len(study.votes()) == 4  # refused ballots write nothing, not even their valid half
    # the constraint itself is in the file, not only in our code
    with sqlite3.connect(study.path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO votes (rater, item_id, criterion, method, at) VALUES ('bob', 1, 'style', 'd', '')"
        )


def test_next_item_walks_every_item_once(tmp_path: Path) -> None:
    study = Study.create(tmp_path, "s", _items(4))
    seen = []
    while (shown := study.next_item("r")) is not None:
        assert shown.position == len(seen) + 1 and shown.total == 4
        seen.append(shown.item_id)
        study.vote("r", shown.item_id, {"prompt": "A", "style": "B"})
    assert sorted(seen) == [1, 2, 3, 4]


def test_tally_share_and_bootstrap_ci(tmp_path: Path) -> None:
    study = Study.create(tmp_path, "s", _items(1))
    for r in range(10):
        _vote_for(study, f"r{r}", 1, "d" if r < 7 else "prompt-only", "stylealigned" if r < 5 else "d")
    tally = {(s.criterion, s.method): s for s in study.tally()}
    assert tally["prompt", "d"].votes == 7 and tally["prompt", "d"].share == pytest.approx(0.7)
    assert tally["prompt", "stylealigned"].share == 0 and tally["prompt", "stylealigned"].ci_high == 0
    assert tally["style", "stylealigned"].share == pytest.approx(0.5)
    for s in tally.values():
        assert s.total == 10
        assert 0 <= s.ci_low <= s.share <= s.ci_high <= 1
    mid = tally["style", "d"]
    assert mid.ci_low < mid.share < mid.ci_high  # 5/10: a real interval, not a point
    assert study.tally() == study.tally()  # seeded
    assert sum(s.share for s in tally.values() if s.criterion == "prompt") == pytest.approx(1)


def test_csv_columns(tmp_path: Path) -> None:
    study = Study.create(tmp_path, "s", _items(1))
    _vote_for(study, "r", 1, "d", "d")
    rows = list(csv.DictReader(io.StringIO(study.csv())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 * len(METHODS)
    d = next(r for r in rows if r["criterion"] == "prompt" and r["method"] == "d")
    assert d["votes"] == "1" and float(d["share"]) == 1 and d["resamples"] == str(BOOTSTRAP_RESAMPLES)


def test_wal_and_full_sync(tmp_path: Path) -> None:
    study = Study.create(tmp_path, "s", _items(1))
    with sqlite3.connect(study.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


_WRITER = """
import sys, time
from scalestyle.ui.study import open_study
study = open_study(sys.argv[1], "s")
order = study.order("killed", 1)
study.vote("killed", 1, {"prompt": "ABC"[order.index("d")], "style": "ABC"[order.index("stylealigned")]})
print("voted", flush=True)
time.sleep(60)
"""


def test_vote_survives_hard_kill_of_writer(tmp_path: Path) -> None:
    Study.create(tmp_path, "s", _items(1))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "voted"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    votes = open_study(tmp_path, "s").votes()
    assert sorted(votes) == [("killed", 1, "prompt", "d"), ("killed", 1, "style", "stylealigned")]


def test_items_from_evaluation_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ref = tmp_path / "ref.png"
    _img((9, 9, 9)).save(ref)
    rows = []
    for content in ("star", "fish"):
        for method in ("d", "stylealigned", "plain"):
            image = f"images/{method}/neon/{content}__s0.png"
            (run / image).parent.mkdir(parents=True, exist_ok=True)
            write_png(_img((1, 2, 3)), run / image, {"method": method})
            rows.append(
                {
                    "method": method,
                    "protocol": "stylear",
                    "content": content,
                    "style": "neon",
                    "seed": 0,
                    "prompt": f"a {content} in neon style",
                    "content_prompt": f"a {content}",
                    "style_prompt": "neon style",
                    "ref_content": None,
                    "ref_file": str(ref),
                    "image": image,
                }
            )
    rows = rows[:-1]  # fish has no plain image
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut')
    items = items_from_evaluation(run, ["d", "stylealigned"])
    assert [i.prompt for i in items] == ["a star", "a fish"]
    assert items[0].reference.getpixel((0, 0)) == (9, 9, 9) and set(items[0].images) == {"d", "stylealigned"}
    assert [i.key for i in items_from_evaluation(run)] == ["star|neon|0"]  # every method: fish lacks plain
    with pytest.raises(StudyError, match="no images of method"):
        items_from_evaluation(run, ["c"])
    with pytest.raises(StudyError, match="no `scalestyle evaluate` folder"):
        items_from_evaluation(tmp_path)


def test_items_from_methods_grid() -> None:
    calls: list[tuple[str, str, int]] = []

    def run(method: str, prompt: str, ref: Image.Image, seed: int) -> Image.Image:
        calls.append((method, prompt, seed))
        return _img((len(calls), 0, 0))

    progress: list[tuple[int, int]] = []
    items = items_from_methods(
        ["a cat", " ", "a dog"],
        [_img((0, 0, 0)), _img((1, 1, 1))],
        ["d", "stylealigned"],
        run,
        seed=5,
        progress=lambda d, t: progress.append((d, t)),
    )
    assert len(items) == 4 and len(calls) == 8 and progress[-1] == (8, 8)
    assert {c[2] for c in calls} == {5}
    with pytest.raises(StudyError, match="at least two methods"):
        items_from_methods(["a"], [_img((0, 0, 0))], ["d", "d"], run)
