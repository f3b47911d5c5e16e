"""lm-eval's ``local-completions`` model with vLLM's remote tokenizer called concurrently.

lm-eval's remote tokenizer sends one ``/tokenize`` request per string, one after the other,
and tokenizes every request of a task before it sends the first completion: two calls per
loglikelihood request, ~2 ms each, so 400 requests spend ~1.8 s tokenizing while a server
with 16 slots and 50 ms per request answers all of them in 1.25 s. vLLM's ``/tokenize`` takes
one prompt per call, so the calls cannot be batched; this model runs them on a thread pool,
ahead of lm-eval's own loop, which then reads the results in its order. Every request sent,
and so every score, is the same as ``local-completions`` sends: the equivalent ``lm-eval run
--model local-completions`` command gives the same numbers.

Imports lm-eval: import this module only where lm-eval runs.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import requests
from lm_eval.api.registry import get_model, register_model
from lm_eval.models.openai_completions import LocalCompletionsAPI

MODEL_NAME = "evalchemy-completions"
# Strings tokenized ahead of lm-eval's loop: bounds the memory of token lists waiting to be
# read (lm-eval keeps its own copies), while keeping every worker busy.
WINDOW = 1024
MAX_WORKERS = 32


class PrefetchingTokenizer:
    """lm-eval's ``RemoteTokenizer`` with ``encode`` served from strings tokenized ahead on
    ``workers`` threads (one HTTP session each). A string nobody announced is tokenized on
    the spot, as lm-eval does: a wrong guess of lm-eval's order costs time, never a result."""

    def __init__(self, inner: Any, workers: int) -> None:
        self._inner = inner
        self._workers = max(1, min(MAX_WORKERS, workers))
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._env_lock = threading.Lock()
        self._futures: dict[str, Future[list[int]]] = {}
        self._uses: Counter[str] = Counter()
        self._queue: deque[str] = deque()

    def __getattr__(self, name: str) -> Any:
        # eos_token, tokenizer_info, decode, batch_decode...: the remote tokenizer's own.
        if name.startswith("_"):  # not yet set (copy, pickle): no recursion through _inner
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _clone(self) -> Any:
        # requests.Session is not thread-safe: each worker thread gets its own copy.
        clone = getattr(self._local, "clone", None)
        if clone is None:
            clone = copy.copy(self._inner)
            clone.session = requests.Session()
            clone.session.headers.update(self._inner.headers)
            # What requests reads from the environment (proxies, CA bundle, .netrc) on every
            # call, ~0.6 ms, more than the call itself: read once, for the tokenizer's URL.
            env = self._environment()
            clone.session.trust_env = False
            clone.session.proxies.update(env["proxies"])
            clone.session.auth = env["auth"]
            clone.cert_config = env["verify"]
            self._local.clone = clone
        return clone

    @functools.cached_property
    def _env(self) -> dict[str, Any]:
        inner = self._inner
        url = f"{inner.base_url}/tokenize"
        env = inner.session.merge_environment_settings(url, {}, None, inner.cert_config, None)
        env["auth"] = requests.utils.get_netrc_auth(url) if inner.session.trust_env else None
        return env

    def _environment(self) -> dict[str, Any]:
        with self._env_lock:
            return self._env

    def _encode_remote(self, text: str) -> list[int]:
        return self._clone().encode(text)

    def prefetch(self, texts: Iterable[str]) -> None:
        """Announce the strings ``encode`` will be asked for, in that order."""
        if self._workers < 2:
            return  # lm-eval's own sequential calls: nothing to gain
        for text in texts:
            if self._uses[text] == 0 and text not in self._futures:
                self._queue.append(text)
            self._uses[text] += 1
        self._fill()

    def _fill(self) -> None:
        if self._pool is None and self._queue:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="evalchemy-tok")
        while self._queue and len(self._futures) < WINDOW:
            text = self._queue.popleft()
            self._futures[text] = self._pool.submit(self._encode_remote, text)  # type: ignore[union-attr]

    def encode(self, text: str) -> list[int]:
        future = self._futures.get(text)
        if future is None:
            return self._inner.encode(text)
        tokens = future.result()
        self._uses[text] -= 1
        if self._uses[text] <= 0:
            del self._futures[text]
            del self._uses[text]
            self._fill()
        # lm-eval never changes a token list in place (it concatenates and slices): sharing
        # one list between the uses of a string is safe.
        return tokens

    def close(self) -> None:
        """Drop what was not read and stop the workers."""
        self._queue.clear()
        self._futures.clear()
        self._uses.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _loglikelihood_strings(pairs: Iterable[tuple[str, str]]) -> Iterable[str]:
    """The strings ``TemplateLM.loglikelihood`` tokenizes, in its order (``_encode_pair`` moves
    the context's trailing spaces into the continuation)."""
    for context, continuation in pairs:
        if context == "":
            yield continuation
            continue
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        yield context + continuation
        yield context


class EvalchemyCompletions(LocalCompletionsAPI):
    """``local-completions`` whose remote tokenizer calls run ``num_concurrent`` at a time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.tokenizer_backend == "remote" and self.tokenizer is not None:
            self.tokenizer = PrefetchingTokenizer(self.tokenizer, self._concurrent)

    def _prefetch(self, texts: Iterable[str]) -> None:
        if isinstance(self.tokenizer, PrefetchingTokenizer):
            self.tokenizer.prefetch(texts)

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> Any:
        self._prefetch(_loglikelihood_strings(req.args for req in requests))
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._done()

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> Any:
        self._prefetch(req.args[0] for req in requests)
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._done()

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> Any:
        if self.tokenized_requests:
            self._prefetch(req.args[0] for req in requests)
        try:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self._done()

    def _done(self) -> None:
        if isinstance(self.tokenizer, PrefetchingTokenizer):
            self.tokenizer.close()


def _register() -> None:
    try:
        register_model(MODEL_NAME)(EvalchemyCompletions)
    except ValueError:
        # Imported again (pytester restores sys.modules after an in-process run): the class
        # an earlier import registered runs this same code; anything else is a real clash.
        existing = get_model(MODEL_NAME)
        if (existing.__module__, existing.__qualname__) != (__name__, "EvalchemyCompletions"):
            raise


_register()
