-- A new task, queued in one step: its lane (model.fairness) is read from the owner's waiting
-- tasks and taken in the same step, so parallel submits of one key get successive lanes.
-- With an Idempotency-Key (A.binding: its value, '' none; K.idempotency: where it is bound),
-- binding it and creating the task are one step: a key is never bound to a task that does not
-- exist (the API process could die in between). After the named args come the record's
-- field, value pairs. Returns {1, lane}, or {0, what the key was bound to} and creates nothing.
--- keys: record queued queue_index queues owner_queued owner_tasks all_tasks idempotency unsent
--- args: task_id now queue last_lane lane_span binding binding_ttl_s
if A.binding ~= '' then
  local bound = redis.call('GET', K.idempotency)
  if bound then return {0, bound} end
  redis.call('SET', K.idempotency, A.binding, 'EX', A.binding_ttl_s)
end
local lane = math.min(tonumber(A.last_lane), redis.call('ZCARD', K.owner_queued))
local now = tonumber(A.now)
redis.call('HSET', K.record, 'lane', lane, unpack(ARGV, REST))
redis.call('ZADD', K.queued, now, A.task_id)
redis.call('ZADD', K.queue_index, lane * tonumber(A.lane_span) + now, A.task_id)
redis.call('SADD', K.queues, A.queue)
redis.call('ZADD', K.owner_queued, now, A.task_id)
redis.call('ZADD', K.owner_tasks, now, A.task_id)
redis.call('ZADD', K.all_tasks, now, A.task_id)
redis.call('ZADD', K.unsent, now, A.task_id)
return {1, lane}
