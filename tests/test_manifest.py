"""The columnar manifest (`Manifest`) against `ManifestEntry` lists, and a recipe's net manifest
against a sequential model of the same rules."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from curate.data import ManifestEntry, load_pool, read_manifest, write_pool
from curate.data.manifest import Manifest, check_manifest, count_actions, count_reasons
from curate.errors import DataError
from curate.recipes.run import net_manifest


def test_a_manifest_checks_writes_and_reads_back_as_its_entries(tmp_path, fixtures):
    pool = load_pool(fixtures / "gsm8k.jsonl")
    ids = pool.dataset["curate_id"]
    entries = [ManifestEntry("gone:1", "removed", "prune:score 0.1, rank 1 of 9"),
               ManifestEntry("old:2", "replaced", "flip:math harder: difficulty 2 -> 9", replaced_by=ids[0]),
               ManifestEntry(ids[1], "added", "reweight:copy 2 of x at weight 1.5"),
               ManifestEntry("gone:3", "removed", "prune:score 0.2, rank 2 of 9")]
    columns = Manifest.rows(pa.array([e.curate_id for e in entries]), "removed", pa.array([e.reason for e in entries]))
    assert count_actions(columns) == {"removed": 4, "added": 0, "replaced": 0}
    manifest = Manifest.of(entries[:2], Manifest.of(entries[2:]))
    assert list(manifest) == entries and len(manifest) == 4
    assert count_actions(manifest) == count_actions(entries)
    assert count_reasons(manifest) == count_reasons(entries) == {
        ("removed", "prune:score"): 2, ("replaced", "flip:math"): 1, ("added", "reweight:copy"): 1}
    assert check_manifest(manifest, pa.chunked_array([ids])) == manifest
    write_pool(pool, tmp_path / "a.parquet", manifest=manifest)
    write_pool(pool, tmp_path / "b.parquet", manifest=entries)
    text = (tmp_path / "a.manifest.jsonl").read_text()
    assert text == (tmp_path / "b.manifest.jsonl").read_text() and text.count("\n") == 4
    assert read_manifest(tmp_path / "a.manifest.jsonl") == entries
    assert Manifest.read(tmp_path / "a.manifest.jsonl") == manifest
    empty = tmp_path / "empty.manifest.jsonl"
    empty.write_text("")
    assert len(Manifest.read(empty)) == 0
    (tmp_path / "bad.jsonl").write_text('{"curate_id": "x", "what": 1}\n')
    with pytest.raises(DataError, match="bad.jsonl: not a manifest"):
        Manifest.read(tmp_path / "bad.jsonl")


def test_a_manifest_refuses_what_an_entry_refuses(fixtures):
    with pytest.raises(DataError, match="action 'dropped'"):
        Manifest.rows(pa.array(["x"]), "dropped", "why")
    with pytest.raises(DataError, match="x: every change needs a reason"):
        Manifest.rows(pa.array(["x"]), "removed", pa.array([""]))
    with pytest.raises(DataError, match="replaced_by is required"):
        Manifest.rows(pa.array(["x"]), "replaced", "why")
    pool = load_pool(fixtures / "gsm8k.jsonl")
    ids = pa.chunked_array([pool.dataset["curate_id"]])
    with pytest.raises(DataError, match="nope:1 is listed as replaced but is not in the output"):
        check_manifest(Manifest.rows(pa.array(["a"]), "replaced", "r", pa.array(["nope:1"])), ids)
    with pytest.raises(DataError, match="is listed as removed but is in the output"):
        check_manifest(Manifest.rows(ids.slice(0, 1), "removed", "r"), ids)


def _sequential(manifests: list[list[ManifestEntry]], present: set[str]) -> list[ManifestEntry]:
    """The net manifest by its rules, one entry at a time (the model the columnar one must match)."""
    origin: dict[str, str | None] = {}
    fate: dict[str, ManifestEntry] = {}
    added: dict[str, ManifestEntry] = {}
    for entries in manifests:
        for e in entries:
            was = origin.pop(e.curate_id, e.curate_id)
            if e.action == "added":
                origin[e.curate_id] = None
                added[e.curate_id] = e
            elif e.action == "replaced":
                origin[e.replaced_by] = was
                if was is None:
                    added.pop(e.curate_id, None)
                    added[e.replaced_by] = ManifestEntry(e.replaced_by, "added", e.reason)
                else:
                    fate[was] = ManifestEntry(was, "replaced", e.reason, e.replaced_by)
            elif was is None:
                added.pop(e.curate_id, None)
            else:
                fate[was] = ManifestEntry(was, "removed", e.reason)
    out = list(fate.values()) + [e for k, e in added.items() if k in present]
    return [e for e in out if e.action != "replaced" or e.replaced_by in present]


class _Pool:
    """What `net_manifest` reads of a pool: its ids."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def columns(self, names):
        return pa.table({"curate_id": pa.array(self.ids, pa.string())})


@pytest.mark.parametrize("seed", range(8))
def test_the_net_manifest_follows_every_row_through_the_steps(seed):
    """Random steps remove, replace and add rows, including rows earlier steps replaced or added."""
    rng = random.Random(seed)
    pool, fresh, steps = [f"in:{i}" for i in range(40)], iter(range(10**6)), []
    for step in range(rng.randint(1, 5)):
        entries, out = [], []
        for row in pool:
            what = rng.random()
            if what < 0.15:
                entries.append(ManifestEntry(row, "removed", f"prune:s{step} {row}"))
            elif what < 0.3:
                new = f"donor:{next(fresh)}"
                entries.append(ManifestEntry(row, "replaced", f"flip:s{step} {row}", replaced_by=new))
                out.append(new)
            else:
                out.append(row)
        for _ in range(rng.randint(0, 4)):
            new = f"copy:{next(fresh)}"
            entries.append(ManifestEntry(new, "added", f"reweight:s{step}"))
            out.append(new)
        rng.shuffle(entries)
        steps.append(entries)
        pool = out
    got = net_manifest([Manifest.of(s) for s in steps], _Pool(pool))
    assert list(got) == _sequential(steps, set(pool))
    assert count_actions(got)["removed"] - count_actions(got)["added"] == 40 - len(pool)
