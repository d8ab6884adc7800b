"""The task core: a task's record, states and moves in Redis, and the machinery every job type
shares around them.

- keyspace: every Redis key name; states: the states and TRANSITIONS; record: TaskRecord and the
  bounds on what it keeps; scripts + lua/: the atomic moves, called by named keys and args;
  store: TaskStore, the moves themselves (create, mark_running, add_item, finish...).
- attempts: leases, requeueing the tasks of dead workers, resending unsent messages;
  runner: one attempt of a task around its job; ending: a task's one end (uploads, webhooks,
  metrics); fairness: lanes between keys; fleet: the workers' heartbeats; eta: queue ETAs;
  housekeeping: pruning what expired.
"""
