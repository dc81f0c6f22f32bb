"""Monmouth's integrations: EigenDA, Othentic, Lagrange and Composio, each its own plugin (entry points
``eigenda``, ``othentic``, ``lagrange``, ``composio``), all off by default.

The machinery they share is built once, here:

* :mod:`.outbox` — a durable outbox written by chain hooks inside the engine's transaction (a revert cancels
  undelivered work exactly) and delivered after commit, with a delivery key per job;
* :mod:`.worker` — the background deliverer (one thread per integration);
* :mod:`.resilience` — retries with exponential backoff and jitter (tenacity) and a circuit breaker (pybreaker);
* :mod:`.http` — httpx calls with errors classified as transient or permanent, and a small JSON-RPC client;
* :mod:`.metrics` — ``monmouth_<name>_...`` metrics; :mod:`.base` — the plugin base class.

See ``docs/integrations.md`` for configuration and guarantees.
"""
