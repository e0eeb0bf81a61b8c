"""A bounded, per-client fair queue for the app's colorization requests, and who a request comes from.

Gradio's own queue serves events first come, first served: eight photos sent at once by one visitor hold every
later visitor behind all eight. Here the colorization events run with no Gradio concurrency limit and each waits
in ``FairQueue.slot`` instead, which

- lets ``slots`` requests run at once (``COLORIZERS_CONCURRENCY``);
- serves waiting clients in turn (round robin), so a visitor waits for at most one request of each other visitor,
  however many those have queued;
- bounds the waiting: at most ``per_client`` waiting requests per client and ``max_waiting`` in all; beyond that a
  request is refused at once with ``Busy`` and a sentence to show ("busy, try again").

``fair(fn, queue)`` wraps an event handler so Gradio passes it the request (to tell clients apart) and it runs in
its turn. A client is the visitor's address (``client_key``).
"""
from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict, deque
from contextlib import contextmanager
from typing import Callable, Iterator

import gradio as gr

MAX_WAITING = 16  # requests waiting in all (each holds one of Gradio's 40 worker threads while it waits)
PER_CLIENT = 4  # requests waiting per client


class Busy(Exception):
    """The queue is full, for everyone or for this client; the message says so in a sentence."""


def client_key(request: gr.Request | None) -> str:
    """Who is asking, for per-client fairness and limits: the first address of X-Forwarded-For (the visitor,
    behind a Space's proxy), else the connection's address."""
    headers = getattr(request, "headers", None) or {}
    try:
        forwarded = headers.get("x-forwarded-for") or ""
    except AttributeError:
        forwarded = ""
    if isinstance(forwarded, str) and forwarded.strip():
        return forwarded.split(",")[0].strip()
    client = getattr(request, "client", None)
    return str(getattr(client, "host", None) or "unknown")


class FairQueue:
    def __init__(self, slots: int, max_waiting: int = MAX_WAITING, per_client: int = PER_CLIENT):
        if slots < 1:
            raise ValueError("a queue needs at least one slot")
        self.slots, self.max_waiting, self.per_client = slots, max_waiting, per_client
        self._running = 0
        self._waiting: OrderedDict[str, deque] = OrderedDict()  # client -> its tickets; clients in serving order
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(len(tickets) for tickets in self._waiting.values())

    def _next_ticket(self):
        return next(iter(self._waiting.values()))[0] if self._waiting else None

    @contextmanager
    def slot(self, client: str) -> Iterator[None]:
        """Wait for this client's turn and hold a slot while the body runs. Raises ``Busy`` when full."""
        with self._cond:
            if self._waiting or self._running >= self.slots:
                total = sum(len(tickets) for tickets in self._waiting.values())
                if len(self._waiting.get(client, ())) >= self.per_client:
                    raise Busy(f"You already have {self.per_client} photos waiting to be colorized. Please wait for "
                               "them to finish before sending more.")
                if total >= self.max_waiting:
                    raise Busy("The app is busy colorizing other visitors' photos right now. Please try again in a "
                               "minute.")
                ticket = object()
                self._waiting.setdefault(client, deque()).append(ticket)
                while not (self._running < self.slots and self._next_ticket() is ticket):
                    self._cond.wait()
                tickets = self._waiting[client]
                tickets.popleft()
                if tickets:
                    self._waiting.move_to_end(client)  # its next request waits for the other clients' turns
                else:
                    del self._waiting[client]
            self._running += 1
            self._cond.notify_all()  # with several slots, the next in turn may start too
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()


def fair(fn: Callable, queue: FairQueue) -> Callable:
    """``fn`` as a Gradio event handler that runs in its client's turn in ``queue``; a full queue gives the
    visitor a sentence (``gr.Error``), not a bare "Error". Gradio passes the request as a last argument."""
    @functools.wraps(fn)
    def handler(*args):
        *inputs, request = args
        try:
            with queue.slot(client_key(request)):
                return fn(*inputs)
        except Busy as err:
            raise gr.Error(str(err), title="Busy, try again", print_exception=False) from None

    parameters = list(inspect.signature(fn).parameters.values())
    parameters.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request))
    handler.__signature__ = inspect.Signature(parameters)
    handler.__annotations__ = {"request": gr.Request}
    del handler.__wrapped__  # Gradio reads the signature above, not fn's
    return handler
