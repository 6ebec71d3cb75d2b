"""Talking to NDIF: which failures are worth retrying, back-off, the API key check, and shipping an
adapter kind's math with a request (`code_by_value`).

A remote request can fail because the network or the server hiccuped (a dropped connection, a
timeout, a 5xx or 429 answer) or because the request itself is wrong (a bad API key, an error in
the intervention). The first kind is retried with exponential back-off; the second is raised at
once, as a `RemoteRequestError` saying what to do. The API key is read by nnsight itself (its
config file or `NDIF_API_KEY`); this module only checks that one exists and never prints it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import sys
import time
from dataclasses import dataclass

from selfinterp_plugins.errors import BackendError

log = logging.getLogger(__name__)

_TRANSIENT_TEXT = re.compile(r"\b(5\d\d|429)\b|timed? ?out|timeout|unavailable|overloaded|connection|try again", re.I)


class RemoteRequestError(BackendError):
    """A remote (NDIF) request failed for good: retries exhausted or not worth retrying."""


@dataclass
class RetryPolicy:
    """How hard to try: `attempts` in all, waits of `backoff`·2^k seconds (capped, jittered)."""

    attempts: int = 4
    backoff: float = 2.0
    max_wait: float = 60.0
    jitter: float = 0.25

    def wait(self, attempt: int) -> float:
        base = min(self.max_wait, self.backoff * 2**attempt)
        return base * (1 + self.jitter * (2 * random.random() - 1))


def is_transient(error: BaseException) -> bool:
    """True for failures a retry can cure: connection drops, timeouts, 5xx/429 answers."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    for link in _chain(error):
        status = getattr(getattr(link, "response", None), "status_code", None)
        if status is not None:
            return status >= 500 or status == 429
        name = type(link).__name__
        if name in ("ConnectError", "ReadTimeout", "ConnectTimeout", "TimeoutException", "RemoteProtocolError",
                    "WebSocketConnectionClosedException", "WebSocketTimeoutException", "WebSocketAddressException"):
            return True
    return type(error).__name__ == "RemoteError" and bool(_TRANSIENT_TEXT.search(str(error)))


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def with_retries(call, policy: RetryPolicy, what: str, sleep=time.sleep):
    """Run `call()` (one remote request), retrying transient failures as `policy` says."""
    for attempt in range(policy.attempts):
        try:
            return call()
        except BackendError:
            raise
        except Exception as error:  # noqa: BLE001 - classified below, re-raised with advice
            if not is_transient(error):
                raise RemoteRequestError(f"The remote {what} failed: {_describe(error)}. {_advice(error)}") from error
            if attempt == policy.attempts - 1:
                raise RemoteRequestError(
                    f"The remote {what} failed {policy.attempts} times ({_describe(error)}); NDIF may be busy or down. "
                    "Rerun later: finished batches are kept when you pass output=..."
                ) from error
            wait = policy.wait(attempt)
            log.warning("remote %s failed (%s); retry %d/%d in %.1f s", what, _describe(error), attempt + 1,
                        policy.attempts - 1, wait)
            sleep(wait)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


def _advice(error: BaseException) -> str:
    text = str(error).lower()
    if "api key" in text or "401" in text or "403" in text or "unauthori" in text:
        return "Check your NDIF API key (NDIF_API_KEY or nnsight.CONFIG.set_default_api_key)."
    if "not running" in text or "not found" in text or "404" in text:
        return "Check the model is served on NDIF (nnsight.ndif.status())."
    return "Rerun with remote='local' to reproduce it offline."


def check_api_key() -> None:
    """Refuse to go to NDIF without a key, before any work is done (the key is never shown)."""
    from nnsight import CONFIG

    if not CONFIG.API.APIKEY:
        raise BackendError(
            "No NDIF API key; set NDIF_API_KEY or call nnsight.CONFIG.set_default_api_key('<key>') "
            "(or rehearse offline with remote='local')."
        )


#: where `normalize` and `scaled` live, the helpers a kind's math calls
ADAPTERS_MODULE = "selfinterp_plugins.adapters"


@contextlib.contextmanager
def code_by_value(fn):
    """Make the requests sent inside the block carry `fn` (an adapter kind's `math`) as code.

    Why this is needed: nnsight pickles a request with cloudpickle, which writes a function of an
    importable module as a reference (module and name) to be imported where the request runs.
    NDIF has neither this package nor a plugin's, so a reference to `FullRank.math` fails there
    with ModuleNotFoundError. cloudpickle writes the functions of modules registered "by value" as
    code instead (nnsight's pickler sends their source and the globals they read), which is what
    `nnsight.register(module)` is for. So, for one request, the module defining `fn` and this
    package's adapters module (the helpers kinds call) are registered, then unregistered, leaving
    cloudpickle as it was. Only what `fn` reads is sent: a few hundred bytes of source.

    The kind's function is passed to the traced code as a value, rather than the traced code
    knowing the kinds, so the math has one source, `Adapter.math`, here and on the server.
    nnsight's own registrations (`pull_env`) are made first, so none of them is undone here.
    """
    import cloudpickle
    from nnsight.ndif import pull_env

    pull_env()
    names = {fn.__module__, ADAPTERS_MODULE} - {"__main__"} - set(cloudpickle.list_registry_pickle_by_value())
    added = [sys.modules[name] for name in sorted(names) if name in sys.modules]
    for module in added:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)
