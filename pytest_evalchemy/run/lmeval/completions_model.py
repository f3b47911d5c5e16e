"""lm-eval's ``local-completions`` model with vLLM's remote tokenizer taken off the critical path.

lm-eval's remote tokenizer sends one ``/tokenize`` request per string, one after the other,
and tokenizes every request of a task before it sends the first completion: two calls per
loglikelihood request, ~2 ms each, so 400 requests spend ~1.8 s tokenizing while a server
with 16 slots and 50 ms per request answers all of them in 1.25 s. vLLM's ``/tokenize`` takes
one prompt per call, so the calls cannot be batched. This model instead

- tokenizes each distinct string once (a question's context is shared by its choices),
  ahead of lm-eval's loop, on a few threads with light ``http.client`` connections;
- with several requests at once and one prompt per request, sends each completion request as
  soon as its tokens are back, while later ones are still being tokenized.

Every request sent, and so every score, is what ``local-completions`` sends: the equivalent
``lm-eval run --model local-completions`` command gives the same numbers.

Imports lm-eval: import this module only where lm-eval runs.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import requests
from aiohttp import ClientResponseError, ClientSession, ClientTimeout, TCPConnector
from lm_eval.api.registry import get_model, register_model
from lm_eval.models.openai_completions import LocalCompletionsAPI
from tenacity import retry, stop_after_attempt, wait_exponential

from .. import concurrency
from ..patience import (
    TRANSIENT_STATUSES,
    Backoff,
    ItemOutage,
    Transient,
    connection_reason,
    retry_after_seconds,
)
from . import private
from .chat_model import CountedEnds, ReasoningPayload, ServerChatTemplate, UrlCredentials
from .policy import ModelPolicy
from .request_cache import QueuedCacheWrites

MODEL_NAME = "evalchemy-completions"
# Strings tokenized ahead of lm-eval's loop: bounds the memory of token lists waiting to be
# read (lm-eval keeps its own copies), while keeping every worker busy.
WINDOW = 1024
# Tokenizer threads per item. More threads fight the event loop that sends the completions
# for the client's CPU: measured against the test server on 2 cores (400 requests, 16 at
# once), 4 threads tie an in-process tokenizer, 8 are 4% and 16 are 7% slower. They run
# whatever num_concurrent says: a /tokenize call is cheap next to a completion, and with
# num_concurrent=1 they keep the one completion in flight from waiting for tokens.
MAX_WORKERS = 4


class _TokenizeClient:
    """``RemoteTokenizer.encode`` (``POST {root}/tokenize`` with ``add_special_tokens: false``,
    its headers, TLS settings, timeout and attempts) over one kept-alive ``http.client``
    connection: a third of the CPU that requests spends per call, and the client's CPU is
    what tokenizing next to hundreds of concurrent completion requests is short of."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        verify: bool | str,
        timeout: float,
        attempts: int,
        outage: ItemOutage | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.outage = outage
        self.path = parts.path or "/"
        self.headers = dict(headers)  # the URL's credentials, if any, are among them
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._context: ssl.SSLContext | None = None
        if self._https:
            if verify is False:
                self._context = ssl._create_unverified_context()
            else:
                cafile = verify if isinstance(verify, str) else None
                self._context = ssl.create_default_context(cafile=cafile)
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.timeout
                )
        return self._conn

    def encode(self, text: str) -> list[int]:
        body = json.dumps({"prompt": text, "add_special_tokens": False}).encode()
        last: Exception | None = None
        tries = 0
        backoff: Backoff | None = None
        while True:
            try:
                conn = self._connection()
                conn.request("POST", self.path, body=body, headers=self.headers)
                response = conn.getresponse()
                data = response.read()
                if response.status in TRANSIENT_STATUSES:
                    raise _Busy(response.status, response.getheader("Retry-After"))
                if response.status >= 400:
                    raise OSError(f"HTTP {response.status}: {data[:200]!r}")
                # Not the end of an outage: only a completion's answer says the server is back.
                tokens = json.loads(data).get("tokens")
                break
            except (_Busy, ConnectionError, http.client.HTTPException, ValueError) as exc:
                # Refused, reset, cut off, 5xx, 429, garbled: the server is away or busy.
                last = exc
                self._reset()
                if self.outage is None or self.outage.window_s <= 0:
                    tries += 1
                    if tries >= self.attempts:
                        self._fail(last)
                    continue
                backoff, delay = self.outage.wait_after(_transient(exc), exc, backoff)
                time.sleep(delay)
            except OSError as exc:  # a timeout, a 4xx: lm-eval's attempts
                last = exc
                self._reset()
                tries += 1
                if tries >= self.attempts:
                    self._fail(last)
        if not isinstance(tokens, list):
            raise RuntimeError("Malformed response from /tokenize endpoint.")
        return tokens

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None  # a fresh connection for the next attempt

    def _fail(self, last: Exception | None) -> None:
        raise RuntimeError(f"RemoteTokenizer: POST {self.url} failed: {last}")


class _Busy(Exception):
    """A transient HTTP status from /tokenize."""

    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def _transient(exc: Exception) -> Transient:
    if isinstance(exc, _Busy):
        return Transient(f"HTTP {exc.status}", retry_after_seconds(exc.retry_after))
    return Transient(type(exc).__name__)


class _KeepErrorBodies:
    """lm-eval's aiohttp session, whose error answers keep their body on the error that
    ``raise_for_status`` raises (aiohttp's has the reason only): an item that gives up on a
    failing server says what the server answered."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def post(self, *args: Any, **kwargs: Any) -> _BodyKept:
        return _BodyKept(self._session.post(*args, **kwargs))


class _BodyKept:
    """``async with session.post(...)`` whose error answer is an ``_ErrorAnswer``."""

    def __init__(self, request: Any) -> None:
        self._request = request

    async def __aenter__(self) -> Any:
        response = await self._request.__aenter__()
        return response if response.ok else _ErrorAnswer(response)

    async def __aexit__(self, *exc: object) -> Any:
        return await self._request.__aexit__(*exc)


class _ErrorAnswer:
    """An aiohttp error answer whose body (read by lm-eval to log it) travels with the
    ``ClientResponseError`` as ``body``, for ``patience.classify``."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._body: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    async def text(self, *args: Any, **kwargs: Any) -> str:
        self._body = await self._response.text(*args, **kwargs)
        return self._body

    def raise_for_status(self) -> None:
        try:
            self._response.raise_for_status()
        except ClientResponseError as exc:
            exc.body = self._body  # type: ignore[attr-defined]
            raise


class PrefetchingTokenizer:
    """lm-eval's ``RemoteTokenizer`` with ``encode`` served from strings tokenized ahead on
    ``workers`` threads (one HTTP connection each). A string nobody announced is tokenized on
    the spot, as lm-eval does: a wrong guess of lm-eval's order costs time, never a result."""

    def __init__(self, inner: Any, workers: int, outage: ItemOutage | None = None) -> None:
        self._inner = inner
        self._outage = outage
        self._workers = max(1, min(MAX_WORKERS, workers))
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._futures: dict[str, Future[list[int]]] = {}
        self._uses: Counter[str] = Counter()
        self._queue: deque[str] = deque()

    def __getattr__(self, name: str) -> Any:
        # eos_token, tokenizer_info, decode, batch_decode...: the remote tokenizer's own.
        if name.startswith("_"):  # not yet set (copy, pickle): no recursion through _inner
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _client(self) -> Any:
        """This worker thread's own client (neither a requests.Session nor an HTTP connection
        may be shared between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            inner = self._inner
            url = f"{inner.base_url}/tokenize"
            # What requests would read from the environment on every call (proxies, CA bundle,
            # .netrc), read once for the tokenizer's URL.
            session, cert_config = private.remote_session(inner)
            env = session.merge_environment_settings(url, {}, None, cert_config, None)
            scheme = urllib.parse.urlsplit(url).scheme
            netrc = requests.utils.get_netrc_auth(url) if session.trust_env else None
            if netrc or env["proxies"].get(scheme) or env["proxies"].get("all"):
                client = copy.copy(inner)  # a proxy or .netrc: lm-eval's own client, via requests
                client.session = requests.Session()
                client.session.headers.update(inner.headers)
            else:
                client = _TokenizeClient(
                    url,
                    inner.headers,
                    env["verify"],
                    inner.timeout,
                    inner.max_retries,
                    self._outage,
                )
            self._local.client = client
        return client

    def _encode_remote(self, text: str) -> list[int]:
        return self._client().encode(text)

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

    async def wait(self, text: str) -> None:
        """Until ``encode(text)`` would not block (an event loop must not wait in ``encode``)."""
        future = self._futures.get(text)
        if future is not None and not future.done():
            await asyncio.wrap_future(future)

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


def _pair_strings(context: str, continuation: str) -> tuple[str, ...]:
    """The strings ``TemplateLM.loglikelihood`` tokenizes for one request, in its order
    (``_encode_pair`` moves the context's trailing spaces into the continuation)."""
    if context == "":
        return (continuation,)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    return context + continuation, context


def _loglikelihood_strings(pairs: Iterable[tuple[str, str]]) -> Iterable[str]:
    for context, continuation in pairs:
        yield from _pair_strings(context, continuation)


class EvalchemyCompletions(
    QueuedCacheWrites,
    ServerChatTemplate,
    CountedEnds,
    ReasoningPayload,
    UrlCredentials,
    LocalCompletionsAPI,
):
    """``local-completions`` whose remote tokenizer calls run ``num_concurrent`` at a time
    (and which renders the server's chat template, sends reasoning payloads and counts the
    answers that ran out of tokens)."""

    def __init__(self, *args: Any, policy: ModelPolicy | None = None, **kwargs: Any) -> None:
        # The harness builds the model with the item's policy (lm-eval is handed the instance).
        self._policy = policy = policy or ModelPolicy()
        self._init_patiently(policy.outage, *args, **kwargs)
        self._outage = policy.outage
        self._context = policy.context
        self._generation_kwargs: list[dict[str, Any]] | None = None
        self._bos_id = self._bos_of(policy)
        if self.tokenizer_backend == "remote" and self.tokenizer is not None:
            self.tokenizer = PrefetchingTokenizer(self.tokenizer, MAX_WORKERS, self._outage)
        # --evalchemy-concurrency auto: num_concurrent is the maximum (it sizes lm-eval's
        # connection pool and picks its concurrent path); the endpoint's shared limit decides
        # how many of those are in flight.
        self._adaptive = policy.limit

    def _init_patiently(self, outage: ItemOutage, *args: Any, **kwargs: Any) -> None:
        """lm-eval's constructor, which reads the server's /tokenizer_info (three quick
        attempts): an item that starts while the server is away waits for it like a request."""
        backoff: Backoff | None = None
        while True:
            try:
                super().__init__(*args, **kwargs)
                return
            except RuntimeError as exc:
                if not private.remote_tokenizer_down(exc) or outage.window_s <= 0:
                    raise
                failure = Transient(f"/tokenizer_info: {connection_reason(exc)}")
                backoff, delay = outage.wait_after(failure, exc, backoff)
                time.sleep(delay)

    # ------------------------------------------------------------ patience with the server
    # lm-eval wraps each call in its own retries (max_retries attempts, 1-10 s apart); a call
    # here rides out an outage of up to --evalchemy-outage-timeout first. Only failures that
    # got no answer are asked again: an answered request is never sent twice.

    def model_call(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().model_call
        return self._outage.call(lambda: parent(*args, **kwargs))

    async def amodel_call(self, session: Any, sem: Any, messages: Any, **kwargs: Any) -> Any:
        # The adaptive limit reacts to an overload first (it cuts and requeues); what is left
        # of an outage is ridden out here.
        session = _KeepErrorBodies(session)
        return await self._outage.acall(
            lambda: self._limited_call(session, sem, messages, **kwargs)
        )

    async def get_batched_requests(self, *args: Any, **kwargs: Any) -> Any:
        """lm-eval's concurrent requests, each of whose outcomes is taken when one fails the
        item: lm-eval stops at the first failure and leaves the rest to asyncio, which prints
        "Task exception was never retrieved" and a traceback for every one."""
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []

        def keep(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **options)
            tasks.append(task)
            return task

        loop.set_task_factory(keep)
        try:
            return await super().get_batched_requests(*args, **kwargs)
        except BaseException:
            for task in tasks:
                task.cancel()  # a request still in flight is of no use to a failed item
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            loop.set_task_factory(None)

    async def _limited_call(self, session: Any, sem: Any, messages: Any, **kwargs: Any) -> Any:
        """lm-eval's request, holding a place of the adaptive limit instead of its semaphore,
        and telling the limit how it went."""
        parent = super().amodel_call
        if self._adaptive is None:
            return await parent(session, sem, messages, **kwargs)
        attempt = 0
        while True:
            attempt += 1
            permit = concurrency.Permit(self._adaptive, len(messages))
            try:
                answer = await parent(session, permit, messages, **kwargs)
            except ClientResponseError as exc:
                if exc.status in (429, 503):
                    if permit.overloaded() and attempt <= concurrency.MAX_REQUEUES:
                        continue  # refused because of how many we sent: wait for a place again
                else:
                    permit.abandon()
                raise
            except TimeoutError:
                permit.timed_out()
                raise
            except BaseException:
                permit.abandon()
                raise
            permit.succeeded()
            return answer

    def parse_generations(self, outputs: Any, **kwargs: Any) -> list[Any]:
        # lm-eval's is a staticmethod that keeps the text only; it is always called on the
        # model, so this one sees the answers first, with their finish reasons.
        self._count_ends(outputs)
        return super().parse_generations(outputs, **kwargs)

    # ------------------------------------------------------------ the context check

    def _loglikelihood_tokens(self, requests: Any, **kwargs: Any) -> Any:
        # Every request, tokenized, before lm-eval sends the first.
        self._check_loglikelihood(requests)
        return super()._loglikelihood_tokens(requests, **kwargs)

    def _check_loglikelihood(self, requests: Iterable[Any]) -> None:
        lengths = [len(ctx) + len(cont) for _, ctx, cont in requests]
        self._context.loglikelihood(lengths, self.max_length)

    # ------------------------------------------------------------ the BOS

    def _bos_of(self, policy: ModelPolicy) -> int | None:
        """The id every prompt starts with, or None. lm-eval's own ``add_bos_token`` reaches
        only a local tokenizer (its remote one always encodes without special tokens), so the
        model adds the BOS itself, for both."""
        if not policy.add_bos or self.tokenizer_backend not in ("remote", "huggingface"):
            return None
        bos = policy.bos_id if policy.bos_id is not None else self.tokenizer.bos_token_id
        if bos is None:
            raise ValueError("add_bos_token is true but the tokenizer has no BOS token")
        return int(bos)

    def _with_bos(self, ids: list[int]) -> list[int]:
        # Never two: a prompt whose text starts with the BOS (a chat template's
        # {{ bos_token }}) keeps the one it has, as lm-eval's hf model does.
        return ids if ids[:1] == [self._bos_id] else [self._bos_id, *ids]

    def tok_encode(self, string: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_bos_id", None) is None:  # unset while lm-eval's __init__ runs
            encoding = super().tok_encode(string, *args, **kwargs)
        else:
            # Each prompt starts with one BOS, as lm-eval's hf model tokenizes it (every call,
            # the whole text, the context alone and an empty context's continuation alike,
            # so a pair's continuation stays the tokens after its context); cut after.
            left = kwargs.pop("left_truncate_len", args[0] if args else None)
            kwargs["add_special_tokens"] = False  # lm-eval calls it with keywords only
            encoding = super().tok_encode(string, **kwargs)
            if isinstance(string, str):
                encoding = self._with_bos(encoding)[-left:] if left else self._with_bos(encoding)
            else:
                encoding = [self._with_bos(ids) for ids in encoding]
                encoding = [ids[-left:] for ids in encoding] if left else encoding
        pending = getattr(self, "_generation_kwargs", None)  # None while lm-eval's __init__ runs
        if pending is not None and not isinstance(string, str) and len(string) == len(pending):
            # generate_until's one call for all its prompts, before any request is sent.
            self._generation_kwargs = None
            by_budget: dict[int, list[int]] = {}
            for ids, gen_kwargs in zip(encoding, pending, strict=True):
                budget = int(gen_kwargs.get("max_gen_toks", private.max_gen_toks(self)))
                by_budget.setdefault(budget, []).append(len(ids))
            for budget, lengths in sorted(by_budget.items()):
                self._context.generation(lengths, budget, self.max_length)
        return encoding

    def _prefetch(self, texts: Iterable[str]) -> None:
        if isinstance(self.tokenizer, PrefetchingTokenizer):
            self.tokenizer.prefetch(texts)

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> Any:
        pairs = [req.args for req in requests]
        self._prefetch(_loglikelihood_strings(pairs))
        try:
            if self._streams():
                return asyncio.run(self._stream_loglikelihood(pairs))
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._done()

    def _streams(self) -> bool:
        """Whether requests go out while later ones are still being tokenized: with one prompt
        per request the order they go out in changes nothing (lm-eval sends the longest
        first). Several prompts per request: lm-eval groups them by token length, which
        needs them all tokenized first, so its own path runs, after the prefetch."""
        # Strict context: lm-eval's path tokenizes every request before sending the first,
        # so an over-long prompt fails the item before any traffic.
        return (
            isinstance(self.tokenizer, PrefetchingTokenizer)
            and private.batch_size(self) == 1
            and not self._context.strict
        )

    def _ssl(self) -> Any:
        # What lm-eval's concurrent client hands aiohttp, plus the CA bundle it ignores there
        # (the harness passes an SSL context itself only when num_concurrent > 1, and the
        # bundle's path, which requests takes, otherwise).
        verify = self.verify_certificate
        if (verify is True or isinstance(verify, str)) and self.ca_cert_path:
            return ssl.create_default_context(cafile=self.ca_cert_path)
        return verify

    def _encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # TemplateLM.loglikelihood's encoding of one request, empty context included.
        if context == "":
            continuation_enc = self.tok_encode(continuation, add_special_tokens=False)
            if self.prefix_token_id != continuation_enc[0]:
                return [self.prefix_token_id], continuation_enc
            return continuation_enc[:1], continuation_enc[1:]
        return private.encode_pair(self, context, continuation)

    async def _stream_loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """lm-eval's concurrent loglikelihood path (``get_batched_requests``: the same session,
        semaphore, retries, ``amodel_call`` and response cache), fed each request as soon as
        its tokens are back instead of after the last one's. Also for ``num_concurrent=1``,
        where lm-eval's own loop opens a new connection per request (``requests.post``)."""
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, PrefetchingTokenizer)
        call = retry(
            stop=stop_after_attempt(self.max_retries),
            wait=wait_exponential(multiplier=0.5, min=1, max=10),
            reraise=True,
        )(self.amodel_call)
        connector = TCPConnector(limit=private.concurrent(self), ssl=self._ssl())
        sem = asyncio.Semaphore(private.concurrent(self))
        tasks: list[asyncio.Task[Any]] = []
        # Looked up now: the plugin's progress counter replaces lm-eval's bar while an item runs.
        bar = private.api_bar()(total=len(pairs), desc="Requesting API")

        def advance(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is None:
                bar.update(1)

        async with ClientSession(
            connector=connector, timeout=ClientTimeout(total=self.timeout)
        ) as session:
            try:
                for context, continuation in pairs:
                    for text in _pair_strings(context, continuation):
                        await tokenizer.wait(text)
                    context_enc, continuation_enc = self._encode_request(context, continuation)
                    self._check_loglikelihood([(None, context_enc, continuation_enc)])
                    inputs, ctxlens, keys = self.batch_loglikelihood_requests(
                        [[((context, continuation), context_enc, continuation_enc)]]
                    )
                    request = call(
                        session=session,
                        sem=sem,
                        messages=inputs,
                        cache_keys=keys,
                        generate=False,
                        ctxlens=ctxlens,
                    )
                    task = asyncio.create_task(request)
                    task.add_done_callback(advance)
                    tasks.append(task)
                answers = await asyncio.gather(*tasks)
            except BaseException:
                # The first failure ends the item: stop the other requests now and collect
                # their errors, rather than leave them to fail on a closed session with
                # errors nobody reads (asyncio logs those whenever they are collected).
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                bar.close()
        return [answer for batch in answers for answer in batch]

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> Any:
        self._prefetch(req.args[0] for req in requests)
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._done()

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> Any:
        if self.tokenized_requests:
            self._prefetch(req.args[0] for req in requests)
            self._generation_kwargs = [req.args[1] for req in requests]
        try:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self._generation_kwargs = None
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
