"""`regenerate-base-certs --local` is race-free like the Secrets Manager path: runs started together
(threads released at once, each with its own lock file handle, as separate processes would have) make
exactly one new CA; the others write nothing, report "lost-race" and exit cleanly."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chalicelib import certs
from tests.builders import race
from toolkit.cli.certs import lock_directory, regenerate_local

NOW = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
FORCE = timedelta(days=36500)  # what --force passes


def regenerate(directory: Path) -> tuple[str, str]:
    action, base = regenerate_local(directory, NOW, FORCE, {})
    return action, certs.fingerprint(base.ca)


def test_two_forced_local_regenerations_at_once_rotate_once(tmp_path: Path) -> None:
    # GIVEN local base certs
    regenerate_local(tmp_path, NOW - timedelta(days=1), FORCE, {})
    original = certs.load_dir(tmp_path)
    for _ in range(3):  # a few rounds: a lucky interleaving must not make this pass
        before = certs.load_dir(tmp_path)
        # WHEN two forced runs start at the same instant, while a third run still holds the directory (so
        # both read the material before either may write: they overlap, whatever the thread scheduling)
        with ThreadPoolExecutor(1) as pool:
            with lock_directory(tmp_path):
                racing = pool.submit(race, lambda: regenerate(tmp_path), lambda: regenerate(tmp_path))
                time.sleep(0.5)
            results = racing.result(timeout=60)
        # THEN one rotated and one lost the race; both report the one CA the directory now holds
        assert sorted(action for action, _ in results) == ["lost-race", "rotated"]
        after = certs.load_dir(tmp_path)
        assert {ca for _, ca in results} == {certs.fingerprint(after.ca)}
        # AND that CA replaced the previous one exactly once (one more retired CA, the previous)
        assert certs.fingerprint(after.ca) != certs.fingerprint(before.ca)
        assert len(after.retired) == len(before.retired) + 1
        assert after.retired[0].ca_pem == before.ca_pem
        certs.check_base_certs(after, NOW)
    assert original.ca_pem in {r.ca_pem for r in certs.load_dir(tmp_path).retired}


def test_forced_runs_released_together_never_lose_or_tear_a_rotation(tmp_path: Path) -> None:
    # GIVEN local base certs; WHEN three forced runs are released together with nothing else holding the lock
    regenerate_local(tmp_path, NOW, FORCE, {})
    before = certs.load_dir(tmp_path)
    results = race(*(lambda: regenerate(tmp_path) for _ in range(3)))
    # THEN each rotated or lost the race (one that starts after another finished rotates again, as a
    # later run would); the material is whole and every rotation retired exactly the CA before it
    rotations = [action for action, _ in results].count("rotated")
    assert rotations >= 1 and {action for action, _ in results} <= {"rotated", "lost-race"}
    after = certs.load_dir(tmp_path)
    certs.check_base_certs(after, NOW)
    assert len(after.retired) == len(before.retired) + rotations
    assert after.retired[rotations - 1].ca_pem == before.ca_pem


def test_two_local_creations_at_once_make_one_ca(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    results = race(*(lambda: regenerate_local(directory, NOW, timedelta(hours=720), {}) for _ in range(2)))
    # one run created the CA; the other waited for the lock and found it made ("lost-race"), or started
    # after it was made ("fresh"): either way it wrote nothing
    actions = sorted(action for action, _ in results)
    assert actions in (["created", "lost-race"], ["created", "fresh"])
    assert results[0][1].ca_pem == results[1][1].ca_pem == certs.load_dir(directory).ca_pem
