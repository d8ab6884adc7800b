-- QUEUED -> RUNNING (or RUNNING again when redelivered after a crash, once the lease of the
-- attempt that had it is gone), in one step: a new attempt (the counter goes up, its token
-- becomes the holder, the lease holds the token), the state, the queue indexes and the running
-- set never disagree, whatever interrupts the worker (a soft time limit can raise between any
-- two Python statements). Returns the attempt's token; false: nothing to run, or another live
-- attempt holds it (a duplicate delivery); 'deferred': its key has its `running_max` tasks
-- running (the task stays queued, in K.deferred and K.unsent). A.holder: the process
-- (`<worker>:<main pid>:<pid>`); A.record_prefix: what a record's key is, less the id.
--- keys: record queued owner_queued running queue_index lease deferred unsent
--- args: task_id pid now holder lease_ms record_prefix
local state = redis.call('HGET', K.record, 'state')
if state ~= 'QUEUED' and state ~= 'RUNNING' then return false end
-- A key at its cap of running tasks: not now (its message is dropped; sent again later).
local cap = tonumber(redis.call('HGET', K.record, 'running_max') or '0')
if state == 'QUEUED' and cap > 0 then
  local owner = redis.call('HGET', K.record, 'owner')
  local mine = 0
  for _, id in ipairs(redis.call('SMEMBERS', K.running)) do
    local other = redis.call('HMGET', A.record_prefix .. id, 'owner', 'state')
    if id ~= A.task_id and other[1] == owner and other[2] == 'RUNNING' then mine = mine + 1 end
  end
  if mine >= cap then
    redis.call('ZADD', K.deferred, A.now, A.task_id)
    redis.call('ZADD', K.unsent, A.now, A.task_id)
    return 'deferred'
  end
end
-- This very call again (its reply was lost and the client retried): the attempt it began.
if state == 'RUNNING' and redis.call('HGET', K.record, 'attempt_started_at') == A.now then
  local holder = redis.call('HGET', K.record, 'holder') or ''
  if string.sub(holder, 1, #A.holder + 1) == A.holder .. ':' then return holder end
end
if state == 'RUNNING' and redis.call('EXISTS', K.lease) == 1 then return false end
local token = A.holder .. ':' .. redis.call('HINCRBY', K.record, 'attempt', 1)
redis.call('HSET', K.record, 'state', 'RUNNING', 'worker_pid', A.pid,
           'attempt_started_at', A.now, 'holder', token)
redis.call('HSETNX', K.record, 'started_at', A.now)
redis.call('ZREM', K.queued, A.task_id)
redis.call('ZREM', K.owner_queued, A.task_id)
redis.call('ZREM', K.queue_index, A.task_id)
redis.call('SADD', K.running, A.task_id)
redis.call('SET', K.lease, token, 'PX', A.lease_ms)
redis.call('ZREM', K.deferred, A.task_id)
return token
