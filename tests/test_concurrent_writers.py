"""Several processes append to one ``results.json`` at once (lessons run side by side, a study beside a notebook):
no record is lost, the file is valid JSON after every write, and a reader never sees a half-written file."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from compresskit import report

WRITERS = 3
RECORDS_EACH = 20
ENVIRONMENT = {"python": "3", "torch": "2", "cpu": "test cpu", "threads": 1}


def _record(record_id: str) -> dict:
    return report.make_record(id=record_id, lesson="99_concurrent", technique="fp16", model="student",
                              runtime="torch-eager", metrics={"map": 0.5}, profile="embedded")


def _write_one_by_one(folder: str, prefix: str, count: int, start) -> None:
    """Append ``count`` records, one ``write_records`` call each: every call is a full read-merge-write."""
    start.wait(60)
    for index in range(count):
        report.write_records([_record(f"{prefix}/{index}")], folder, environment=ENVIRONMENT)


def _read_while_written(folder: str, start, done, results) -> None:
    """Read the file over and over until the writers finish; report how many reads, and every bad one."""
    path = Path(folder) / "results.json"
    start.wait(60)
    reads, bad, counts = 0, [], []
    while not done.is_set():
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:  # before the first write
            continue
        reads += 1
        try:
            counts.append(len(json.loads(text)["records"]))
        except (ValueError, KeyError) as exc:
            bad.append(f"{type(exc).__name__}: {exc} ({len(text)} characters)")
    results.put({"reads": reads, "bad": bad, "counts": counts})


def test_concurrent_writers_lose_no_record_and_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    # spawn: each writer is a fresh interpreter, as two lessons' kernels are.
    context = multiprocessing.get_context("spawn")
    start, done, results = context.Event(), context.Event(), context.Queue()
    writers = [context.Process(target=_write_one_by_one, args=(str(tmp_path), f"w{n}", RECORDS_EACH, start))
               for n in range(WRITERS)]
    reader = context.Process(target=_read_while_written, args=(str(tmp_path), start, done, results))
    for process in [*writers, reader]:
        process.start()
    start.set()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    done.set()
    seen = results.get(timeout=60)
    reader.join(timeout=60)
    assert reader.exitcode == 0

    document = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    written = [record["id"] for record in document["records"]]
    expected = {f"w{n}/{index}" for n in range(WRITERS) for index in range(RECORDS_EACH)}
    lost = expected - set(written)
    assert not lost, f"{len(lost)} of {len(expected)} records lost: {sorted(lost)[:5]}"
    assert len(written) == len(expected)  # nothing written twice either
    # Each writer's records keep the order it wrote them in (merge appends new ids).
    for n in range(WRITERS):
        own = [int(record_id.split("/")[1]) for record_id in written if record_id.startswith(f"w{n}/")]
        assert own == list(range(RECORDS_EACH))
    assert seen["reads"] > 0 and not seen["bad"], seen["bad"][:3]
    assert seen["counts"] == sorted(seen["counts"])  # a merge only ever adds: no read saw records vanish
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no lock file or temporary file left
