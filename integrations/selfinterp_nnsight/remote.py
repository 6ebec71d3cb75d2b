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
import errno
import logging
import random
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from selfinterp_plugins.errors import BackendError

log = logging.getLogger(__name__)

#: what an unreachable host looks like in the error texts of requests, httpx and websocket-client
_UNREACHABLE_TEXT = re.compile(r"name or service not known|name resolution|nodename nor servname|getaddrinfo|"
                               r"network is unreachable|no route to host|connection refused", re.I)
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
#: a hub repository id as NDIF names models: `org/name` or a bare name, never a filesystem path
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
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
    """True for failures a retry can cure: connection drops, timeouts, 5xx/429 answers, a host
    that cannot be reached for now (a network blip)."""
    if isinstance(error, (ConnectionError, TimeoutError)) or is_unreachable(error):
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


def is_unreachable(error: BaseException) -> bool:
    """True when the host could not be reached at all (no DNS, no route, connection refused):
    the likely cause is this machine's network, not NDIF being busy."""
    for link in _chain(error):
        if isinstance(link, socket.gaierror) or type(link).__name__ == "WebSocketAddressException":
            return True
        if isinstance(link, OSError) and link.errno in _UNREACHABLE_ERRNOS:
            return True
        if _UNREACHABLE_TEXT.search(str(link)):
            return True
    return False


def with_retries(call, policy: RetryPolicy, what: str, sleep=time.sleep, host: str | None = None):
    """Run `call()` (one remote request), retrying transient failures as `policy` says."""
    for attempt in range(policy.attempts):
        try:
            return call()
        except BackendError:
            raise
        except Exception as error:  # noqa: BLE001 - classified below, re-raised with advice
            if not is_transient(error):
                raise RemoteRequestError(f"The remote {what} failed: {_describe(error)}. {_advice(error)}") from error
            if attempt == policy.attempts - 1 and is_unreachable(error):
                raise RemoteRequestError(
                    f"The remote {what} could not reach {host or 'NDIF'} in {policy.attempts} attempts "
                    f"({_describe(error)}): this machine's network, DNS or proxy is the likely cause, not NDIF. "
                    "Check the connection to that host, then rerun: finished batches are kept when you pass output=..."
                ) from error
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


def check_remote_value(remote) -> None:
    """`remote` takes exactly its documented values; any other string is refused here rather than
    sent to nnsight as a host name (`remote="False"` or `"yes"` would be)."""
    if remote is False or remote is True or remote == "local":
        return
    if isinstance(remote, str) and remote.startswith(("http://", "https://")):
        return
    hint = ""
    if isinstance(remote, str) and remote.strip().lower() in ("false", "off", "no", "0", "none", ""):
        hint = " (a string: to run here pass remote=False)"
    elif isinstance(remote, str) and remote.strip().lower() in ("true", "on", "yes", "1", "ndif"):
        hint = " (a string: to run on NDIF pass remote=True)"
    raise BackendError(f"remote takes False (here), True (NDIF), 'local' (NDIF's path rehearsed here) or an NDIF "
                       f"host URL ('https://...'), got {remote!r}{hint}.")


def check_servable(model, remote) -> None:
    """NDIF runs the model named by the request's hub id; a model built from a local directory or
    an in-memory module has none, and nnsight would send a path or nothing, failing on the server
    with a hub repo-id error. Refused here, with how to build a servable model."""
    repo = getattr(model, "repo_id", None)
    if isinstance(repo, str) and _HUB_ID.fullmatch(repo) and not Path(repo).exists():
        return
    origin = "a model object in memory" if not repo else f"the local path {repo!r}"
    raise BackendError(
        f"remote={remote!r} runs the model on NDIF, which knows models by hub id, but this nnsight model was built "
        f"from {origin}. Build it from the hub id NDIF serves (nnsight.TransformersModel('<org>/<model>'); "
        "`nnsight.ndif.status()` lists them), or rehearse here with remote='local'."
    )


#: where `normalize` and `scaled` live, the helpers a kind's math calls
ADAPTERS_MODULE = "selfinterp_plugins.adapters"


@contextlib.contextmanager
def code_by_value(*fns):
    """Make the requests sent inside the block carry `fns` (an adapter kind's `math`, the core's
    injection arithmetic `sites.combine`, a patch's term) as code.

    Why this is needed: nnsight pickles a request with cloudpickle, which writes a function of an
    importable module as a reference (module and name) to be imported where the request runs.
    NDIF has neither this package nor a plugin's, so a reference to `FullRank.math` fails there
    with ModuleNotFoundError. cloudpickle writes the functions of modules registered "by value" as
    code instead (nnsight's pickler sends their source and the globals they read), which is what
    `nnsight.register(module)` is for. So, for one request, the module defining `fn` and this
    package's adapters module (the helpers kinds call) are registered, then unregistered, leaving
    cloudpickle as it was. Only what the functions read is sent: a few hundred bytes of source.

    The kind's function is passed to the traced code as a value, rather than the traced code
    knowing the kinds, so the math has one source, `Adapter.math`, here and on the server.
    nnsight's own registrations (`pull_env`) are made first, so none of them is undone here.
    """
    import cloudpickle
    from nnsight.ndif import pull_env

    pull_env()
    names = {*(fn.__module__ for fn in fns), ADAPTERS_MODULE} - {"__main__"} - set(cloudpickle.list_registry_pickle_by_value())
    added = [sys.modules[name] for name in sorted(names) if name in sys.modules]
    for module in added:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)
