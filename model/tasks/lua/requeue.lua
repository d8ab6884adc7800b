-- RUNNING -> QUEUED: the attempt holding the task is gone (no lease: it stopped renewing it for
-- longer than the grace; or the lease is still the token of a process known dead). Checked
-- again here, whichever reaper got here first: A.holder and A.lease ('' none) are what the
-- reaper saw. Back in lane 0 (model.fairness): its score in the index is the time alone.
--- keys: record lease queued owner_queued queue_index running unsent
--- args: task_id holder lease now
local state = redis.call('HGET', K.record, 'state')
-- This very call again (its reply was lost and the client retried): it did requeue the task.
if state == 'QUEUED' and redis.call('HGET', K.record, 'requeued_at') == A.now then return 1 end
if state ~= 'RUNNING' then return 0 end
if redis.call('HGET', K.record, 'holder') ~= A.holder then return 0 end
local lease = redis.call('GET', K.lease) or ''
if lease ~= A.lease then return 0 end
redis.call('HSET', K.record, 'state', 'QUEUED', 'holder', '', 'requeued_at', A.now, 'lane', 0)
redis.call('HINCRBY', K.record, 'requeues', 1)
redis.call('DEL', K.lease)
local now = tonumber(A.now)
redis.call('ZADD', K.queued, now, A.task_id)
redis.call('ZADD', K.owner_queued, now, A.task_id)
redis.call('ZADD', K.queue_index, now, A.task_id)
redis.call('SREM', K.running, A.task_id)
redis.call('ZADD', K.unsent, now, A.task_id)
return 1
