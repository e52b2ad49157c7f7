"""The Ray driver's loop (hydra/launcher=ray_actors): batches handed out, results written, the dead's batches retried.

Batches go out costliest first, one at a time to whichever actor is free, an
actor taking the batches of the models it has loaded first. What an actor sends
back (calls.Encoded: PNG bytes and manifest rows; score rows with score=) is
written here, on writer threads, under this writer's claims. An actor that dies lost only the batch
it was rendering: that batch goes to the next free actor, or becomes error
rows once it has killed 1 + max_retries actors.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any, Sequence

from sweeper.errors import Interrupted

PING_SECONDS = 0.5
RESTART_SECONDS = 600  # an actor not back by then is crash-looping: go on without it


class Queue:
    """Batches to hand out, costliest first; an actor takes those of the models it has loaded first."""

    def __init__(self, batches: Sequence[Any]) -> None:
        from sweeper.planning.schedule import load_key

        self._load_key = load_key
        self._groups: dict[tuple, collections.deque] = {}
        for batch in sorted(batches, key=lambda batch: -batch.cost):
            self._groups.setdefault(load_key(batch.specs[0]), collections.deque()).append(batch)

    def __bool__(self) -> bool:
        return bool(self._groups)

    def take(self, loaded: tuple | None) -> Any:
        """The costliest batch of the models `loaded`, else the costliest of all."""
        key = loaded if loaded in self._groups else max(self._groups, key=lambda k: self._groups[k][0].cost)
        group = self._groups[key]
        batch = group.popleft()
        if not group:
            del self._groups[key]
        return batch

    def put_back(self, batch: Any) -> None:
        """A batch to try again, first of its models."""
        self._groups.setdefault(self._load_key(batch.specs[0]), collections.deque()).appendleft(batch)

    def drain(self) -> list[Any]:
        batches = [batch for group in self._groups.values() for batch in group]
        self._groups.clear()
        return batches


class Dispatch:
    """The driver's loop: hand out batches, write what comes back, retry what an actor's death lost."""

    def __init__(self, prepared: Any, sweep_dir: Path, actors: list[Any], batches: Sequence[Any], max_retries: int) -> None:
        from sweeper.storing import manifest, scores
        from sweeper.storing.store import BackgroundWriter
        from sweeper.storing.writers import Claims

        self.prepared, self.sweep_dir, self.actors, self.max_retries = prepared, sweep_dir, actors, max_retries
        self.writer, self.parts, self.claims = BackgroundWriter(), manifest.PartWriter(sweep_dir), Claims(sweep_dir)
        self.scores = scores.PartWriter(sweep_dir)  # the rows of score=[...], scored by the actors
        self.queue = Queue(batches)
        self.loaded: dict[int, tuple | None] = dict.fromkeys(range(len(actors)))  # actor -> the models it last rendered with
        self.in_flight: dict[Any, tuple[int, Any]] = {}  # ref -> (actor, batch)
        self.waking: dict[Any, tuple[int, float]] = {}  # ping ref -> (actor restarting, since)
        self.busy: dict[int, bool] = dict.fromkeys(range(len(actors)), False)
        self.ready = set(range(len(actors)))  # actors that take work (the others restart or are gone)
        self.deaths: collections.Counter = collections.Counter()  # id(batch) -> actors it lost
        self.failed: list[tuple[str, str]] = []
        self.bar: Any = None

    def run(self) -> list[tuple[str, str]]:
        """Render every batch; (image_id, error) of the images that failed."""
        from sweeper.launching import run

        with run.progress_bar(len(self.prepared.todo)) as self.bar:
            try:
                self._loop()
            except KeyboardInterrupt:
                self._drain()
                raise Interrupted(self.sweep_dir, len(self.prepared.specs)) from None
            self._drain()
        return self.failed

    def _loop(self) -> None:
        import ray

        while self.queue or self.in_flight:
            self._hand_out()
            if not self.in_flight and not self.waking:  # every actor gone: what is left cannot render
                self._give_up(self.queue.drain(), "no Ray actor is left to render it")
                return
            ready, _ = ray.wait([*self.in_flight, *self.waking], num_returns=1, timeout=PING_SECONDS)
            for ref in ready:
                if ref in self.waking:
                    self._woken(ref)
                else:
                    self._returned(ref)

    def _hand_out(self) -> None:
        """Each free actor takes the next batch (one at a time: an actor that dies lost only the batch it was rendering)."""
        from sweeper.planning import schedule

        for actor in sorted(self.ready):
            while self.queue and not self.busy[actor]:
                batch = self.queue.take(self.loaded[actor])
                if not self.deaths[id(batch)]:  # a retried batch's claims are ours already
                    mine = self.claims.take(batch.specs)
                    if len(mine) < len(batch.specs):  # another writer rendered or claimed some since the plan
                        self.bar.update(len(batch.specs) - len(mine))
                        if not mine:
                            continue
                        batch = schedule.Batch(tuple(mine))
                self.in_flight[self.actors[actor].render.remote(list(batch.specs))] = (actor, batch)
                self.busy[actor], self.loaded[actor] = True, schedule.load_key(batch.specs[0])

    def _returned(self, ref: Any) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        actor, batch = self.in_flight.pop(ref)
        self.busy[actor] = False
        try:
            encoded, messages, fatal, scored = ray.get(ref)
        except RayActorError as error:
            self._lost(actor, batch, " ".join(str(error).split())[:300])
            return
        except RayTaskError as error:  # raised in the actor, not by the pipeline call (which gives error rows)
            self._give_up([batch], f"the Ray actor failed: {' '.join(str(error.cause or error).split())[:300]}", claimed=True)
            return
        for message in messages:
            self.bar.write(message)
        for call in encoded:
            self.failed.extend((row["image_id"], row["error"]) for row in call.rows if row["status"] != "ok")
        self.writer.submit(lambda: self._store(encoded, scored))
        self.deaths.pop(id(batch), None)
        self.bar.update(len(batch.specs))
        if fatal:  # its CUDA context is unusable: a fresh process
            self.bar.write(f"sweeper: Ray actor {actor} hit a CUDA error; Ray restarts it")
            ray.kill(self.actors[actor], no_restart=False)
            self._restart(actor)

    def _store(self, encoded: list[Any], scored: list[dict[str, Any]]) -> None:
        """A batch's images and rows (calls.write), then their scores (on a writer thread)."""
        from sweeper.rendering.calls import write

        for call in encoded:
            write(call, self.sweep_dir, self.parts, self.claims)
        if scored:
            self.scores.add(scored)

    def _lost(self, actor: int, batch: Any, reason: str) -> None:
        """An actor died with `batch` in flight: the batch goes to the next free actor, or becomes error rows."""
        if actor in self.ready:
            self.bar.write(f"sweeper: Ray actor {actor} died; its batch goes to the next free actor ({reason})")
            self._restart(actor)
        self.deaths[id(batch)] += 1
        if self.deaths[id(batch)] > self.max_retries:
            self._give_up([batch], f"its Ray actor died {self.deaths[id(batch)]} times rendering this batch ({reason})", claimed=True)
        else:
            self.queue.put_back(batch)

    def _restart(self, actor: int, since: float | None = None) -> None:
        """Wait for Ray to restart `actor`: ping it until it answers."""
        self.ready.discard(actor)
        self.waking[self.actors[actor].ready.remote()] = (actor, time.monotonic() if since is None else since)

    def _woken(self, ref: Any) -> None:
        """A ping to a restarting actor came back: it takes work again, is still restarting, or is gone."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        actor, since = self.waking.pop(ref)
        try:
            ray.get(ref)
            self.ready.add(actor)
        except ActorUnavailableError:
            if time.monotonic() - since < RESTART_SECONDS:
                time.sleep(PING_SECONDS)
                self._restart(actor, since)
            else:
                self.bar.write(f"sweeper: Ray actor {actor} did not come back in {RESTART_SECONDS} s; going on without it")
        except RayActorError as error:
            self.bar.write(f"sweeper: Ray actor {actor} is gone: {' '.join(str(error).split())[:300]}")

    def _give_up(self, batches: Sequence[Any], reason: str, claimed: bool = False) -> None:
        """Error rows for `batches`; the claims go of those handed out before (the others' are not ours)."""
        from sweeper.storing import manifest
        from sweeper.storing.store import image_path

        specs = [spec for batch in batches for spec in batch.specs]
        ours = [spec for batch in batches if self.deaths.pop(id(batch), 0) or claimed for spec in batch.specs]
        error = f"not rendered: {reason}; the same command renders it"
        rows = [manifest.row(spec, image_path(spec), "error", error, world_size=len(self.actors)) for spec in specs]
        if rows:
            self.writer.submit(lambda: (self.parts.add(rows), self.claims.release(ours)))
        self.failed.extend((spec.image_id, error) for spec in specs)
        self.bar.update(len(specs))

    def _drain(self) -> None:
        self.writer.close()
        self.parts.close()
        self.scores.close()
