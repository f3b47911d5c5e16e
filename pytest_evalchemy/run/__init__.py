"""Running an item: the endpoint, patience, lm-eval's harness and the completions/chat
models, chat settings, concurrency, serving vLLM and the router, the task index, and
``evaluation`` (one item from request to record). Pure (no pytest)."""
