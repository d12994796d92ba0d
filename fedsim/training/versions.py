"""The server's model and the versions of it that in-flight tasks carry.

The global model *is* its current :class:`Version`. A task dispatched now carries the current
version (a shared reference, no copy). When the model changes while tasks still hold the
current version, the new model is written out of place into a fresh buffer,
``w_new = w + alpha x`` in one pass, so taking the snapshot costs nothing beyond the update
itself; when nobody holds it, the model is changed in place. A version released by its last
task (once that task's work is computed, before the rule changes the model), and which is no
longer current, returns its buffer to a pool. So at most C versions are alive (those of the
other C - 1 in-flight tasks, plus the new model), and all tasks dispatched while the model does
not change (the C initial tasks; FedBuff between two server steps) share one version.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import torch


class Version:
    """A model version: ``flat`` (the vector), ``views`` (parameter-shaped views of it),
    ``step`` (how many model changes preceded it), ``first``/``last`` (update indices of the
    first and last dispatch that carried it; -1 before the first) and ``refs`` (in-flight tasks
    carrying it)."""

    __slots__ = ("flat", "views", "step", "first", "last", "refs")

    def __init__(self, flat: torch.Tensor, views: list[torch.Tensor]) -> None:
        self.flat = flat
        self.views = views
        self.step = 0
        self.first = -1
        self.last = -1
        self.refs = 0


class ModelVersions:
    """The global model ``w`` (the current version's vector) and the older versions still held.

    Update rules change the model only through :meth:`add_`, :meth:`lerp_`, :meth:`copy_` or
    :meth:`writable`. ``step`` counts the changes; ``held`` is the set of versions alive;
    ``max_alive`` the most held at once.
    """

    def __init__(self, w: torch.Tensor, views: Callable[[torch.Tensor], list[torch.Tensor]]) -> None:
        self._views = views
        self.current = Version(w, views(w))
        self.step = 0
        self.held: set[Version] = {self.current}
        self.max_alive = 1
        self._pool: list[Version] = []
        self._restored: list[Version] = []
        self._restored_first: list[int] = []

    @property
    def w(self) -> torch.Tensor:
        """The current global model (flat). Read it; change it through the methods below."""
        return self.current.flat

    # -----------------------------------------------------------------------------------
    # tasks

    def share(self, update: int) -> Version:
        """The current version, for a task dispatched at update index ``update``."""
        v = self.current
        if v.first < 0:
            v.first = update
        v.refs += 1
        v.last = update
        return v

    def release(self, v: Version) -> None:
        """A task carrying ``v`` no longer needs it (its work is computed)."""
        v.refs -= 1
        if v.refs == 0 and v is not self.current:
            self.held.discard(v)
            self._pool.append(v)

    # -----------------------------------------------------------------------------------
    # changes of the model

    def add_(self, x: torch.Tensor | list[torch.Tensor], alpha: float = 1.0) -> None:
        """w <- w + alpha x; ``x`` is a flat vector or one tensor per parameter."""
        cur = self.current
        if cur.refs:
            new = self._fresh()
            if isinstance(x, list):
                for src, term, dst in zip(cur.views, x, new.views):
                    torch.add(src, term, alpha=alpha, out=dst)
            else:
                torch.add(cur.flat, x, alpha=alpha, out=new.flat)
            self._switch(new)
        else:
            if isinstance(x, list):
                for dst, term in zip(cur.views, x):
                    dst.add_(term, alpha=alpha)
            else:
                cur.flat.add_(x, alpha=alpha)
            self._touch(cur)

    def lerp_(self, end: torch.Tensor, weight: float) -> None:
        """w <- w + weight (end - w)."""
        cur = self.current
        if cur.refs:
            new = self._fresh()
            torch.lerp(cur.flat, end, weight, out=new.flat)
            self._switch(new)
        else:
            cur.flat.lerp_(end, weight)
            self._touch(cur)

    def copy_(self, x: torch.Tensor) -> None:
        """w <- x."""
        self.writable().copy_(x)

    def writable(self) -> torch.Tensor:
        """The global model as a tensor the caller may change in place (copied first if tasks hold it)."""
        cur = self.current
        if cur.refs:
            new = self._fresh()
            new.flat.copy_(cur.flat)
            self._switch(new)
            return new.flat
        self._touch(cur)
        return cur.flat

    def _fresh(self) -> Version:
        if self._pool:
            return self._pool.pop()
        flat = torch.empty_like(self.current.flat)
        return Version(flat, self._views(flat))

    def _switch(self, new: Version) -> None:
        """``new`` becomes the current model; the old one stays alive for the tasks holding it."""
        self.step += 1
        new.step, new.first, new.last, new.refs = self.step, -1, -1, 0
        self.current = new
        self.held.add(new)
        if len(self.held) > self.max_alive:
            self.max_alive = len(self.held)

    def _touch(self, cur: Version) -> None:
        """``cur`` (held by no task) was changed in place: it is a new version."""
        self.step += 1
        cur.step, cur.first, cur.last = self.step, -1, -1

    # -----------------------------------------------------------------------------------
    # checkpoints: the model, and the versions in-flight tasks hold, found by dispatch index

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.cpu().clone(), "step": self.step, "max_alive": self.max_alive, "versions": [
            {"flat": v.flat.cpu().clone(), "step": v.step, "first": v.first, "last": v.last, "refs": v.refs,
             "current": v is self.current}
            for v in self.held if v.refs > 0]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the model and the held versions; :meth:`restored` finds the latter by dispatch index."""
        self.step = state["step"]
        self.max_alive = state["max_alive"]
        items = sorted(state["versions"], key=lambda item: item["first"])
        restored = []
        for item in items:
            v = self._fresh()
            v.flat.copy_(item["flat"])
            v.step, v.first, v.last, v.refs = item["step"], item["first"], item["last"], item["refs"]
            restored.append(v)
            if item["current"]:
                self._pool.append(self.current)
                self.current = v
        if not any(item["current"] for item in items):
            cur = self.current
            cur.flat.copy_(state["w"])
            cur.step, cur.first, cur.last, cur.refs = self.step, -1, -1, 0
        self._restored = restored
        self._restored_first = [v.first for v in restored]
        self.held = {self.current, *restored}

    def restored(self, update: int) -> Version:
        """The restored version carried by a task dispatched at ``update`` (before the checkpoint)."""
        k = bisect.bisect_right(self._restored_first, update) - 1
        assert k >= 0 and update <= self._restored[k].last, f"no checkpointed version for dispatch index {update}"
        return self._restored[k]
