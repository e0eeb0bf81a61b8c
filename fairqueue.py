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
its turn. A client is the visitor's address (``client_key``): the connection's address, or, behind a configured
number of trusted proxies (``COLORIZERS_TRUSTED_PROXIES``; one on a Hugging Face Space, whose proxy appends the
visitor's address), the right-most address in ``X-Forwarded-For`` that no trusted proxy wrote. What a client writes
into that header itself is never used, so made-up addresses cannot pass for other visitors. IPv6 addresses count
by their /64 network (what one home or host is given), so one client cannot be many visitors by address either.
"""
from __future__ import annotations

import ctypes
import functools
import inspect
import ipaddress
import os
import threading
from collections import OrderedDict, deque
from contextlib import contextmanager
from typing import Callable, Iterator

import gradio as gr

MAX_WAITING = 16  # requests waiting in all (each holds one of Gradio's 40 worker threads while it waits)
PER_CLIENT = 4  # requests waiting per client


def release_memory() -> None:
    """Hand the memory a finished request freed back to the system (glibc keeps freed heap pages for reuse, so a
    server's resident memory grew to its largest request's and stayed there). Nothing where glibc is absent."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


class Busy(Exception):
    """The queue is full, for everyone or for this client; the message says so in a sentence."""


TRUSTED_PROXIES_ENV = "COLORIZERS_TRUSTED_PROXIES"


def trusted_proxies_from_env(environ=os.environ) -> int:
    """How many proxies in front of the app append to ``X-Forwarded-For`` and are trusted to: the whole number in
    ``COLORIZERS_TRUSTED_PROXIES``, else 1 on a Hugging Face Space (``SPACE_ID`` is set there; the Hub's proxy
    appends the visitor's address) and 0 elsewhere (the connection's address is the client's)."""
    raw = environ.get(TRUSTED_PROXIES_ENV, "").strip()
    if not raw:
        return 1 if environ.get("SPACE_ID") else 0
    if not raw.isdigit():
        raise ValueError(f"{TRUSTED_PROXIES_ENV} must be 0 or a positive whole number, got {raw!r}")
    return int(raw)


def _forwarded_for(headers) -> list[str]:
    """Every address of every ``X-Forwarded-For`` header, in order (a repeated header counts as one list)."""
    try:
        values = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else [
            value for name, value in headers.items() if str(name).lower() == "x-forwarded-for"]
    except (AttributeError, TypeError):
        return []
    return [part.strip() for value in values if isinstance(value, str) for part in value.split(",") if part.strip()]


def _address(text: str) -> str:
    """An address as a client key: the IP without a port; an IPv6 address as its /64 network."""
    text = text.strip()
    host = text
    if text.startswith("[") and "]" in text:  # [v6]:port
        host = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        host = text.split(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return text[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_key(request: gr.Request | None, trusted_proxies: int | None = None) -> str:
    """Who is asking, for per-client fairness and limits. The chain of addresses is ``X-Forwarded-For``'s
    followed by the connection's; the last ``trusted_proxies`` of them are the trusted proxies themselves (the
    connection is the nearest), so the client is the one just before them: the right-most address no trusted
    proxy is known by. With no trusted proxy that is the connection's address, whatever the headers say.
    ``trusted_proxies``: None reads ``trusted_proxies_from_env``."""
    hops = trusted_proxies_from_env() if trusted_proxies is None else trusted_proxies
    client = getattr(request, "client", None)
    peer = str(getattr(client, "host", None) or "unknown")
    if hops <= 0:
        return _address(peer)
    chain = [*_forwarded_for(getattr(request, "headers", None) or {}), peer]
    return _address(chain[max(0, len(chain) - 1 - hops)])


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


def fair(fn: Callable, queue: FairQueue, trusted_proxies: int | None = None) -> Callable:
    """``fn`` as a Gradio event handler that runs in its client's turn in ``queue``; a full queue gives the
    visitor a sentence (``gr.Error``), not a bare "Error". Gradio passes the request as a last argument; the client
    is ``client_key(request, trusted_proxies)``."""
    @functools.wraps(fn)
    def handler(*args):
        *inputs, request = args
        try:
            with queue.slot(client_key(request, trusted_proxies)):
                try:
                    return fn(*inputs)
                finally:
                    release_memory()  # before the next request in the queue starts
        except Busy as err:
            raise gr.Error(str(err), title="Busy, try again", print_exception=False) from None

    parameters = list(inspect.signature(fn).parameters.values())
    parameters.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request))
    handler.__signature__ = inspect.Signature(parameters)
    handler.__annotations__ = {"request": gr.Request}
    del handler.__wrapped__  # Gradio reads the signature above, not fn's
    return handler
