-- An active task's end, in one step: terminal state, expiry of its record, items, detail and
-- kept manifests, the tombstone, out of every queue index and the running set, its duration
-- for ETAs. A task is finished exactly once even when the job, the reaper, a signal handler
-- and a DELETE race. An attempt ends it only while it holds it (A.token, '' any); a worker's
-- main process (time limits) only while one of its own processes holds it, or nobody ever
-- started it (A.worker_prefix, '' any). A.allowed: the states it may leave (JSON).
--- keys: record items detail tomb queued owner_queued running durations manifests queue_index lease stored unsent
--- args: allowed fields task_id expire_at tomb_expire_at now durations_kept token worker_prefix
--- uses: held
local state = redis.call('HGET', K.record, 'state')
if not state then return false end
-- This very call again (its reply was lost and the client retried): it did end the task.
if redis.call('HGET', K.record, 'finished_at') == cjson.decode(A.fields)['finished_at'] then
  return state
end
local ok = false
for _, s in ipairs(cjson.decode(A.allowed)) do
  if s == state then ok = true end
end
if not ok or not held(K.record, A.token) then return false end
if A.worker_prefix ~= '' then
  local holder = redis.call('HGET', K.record, 'holder') or ''
  local attempts = tonumber(redis.call('HGET', K.record, 'attempt') or '0')
  local ours = string.sub(holder, 1, #A.worker_prefix) == A.worker_prefix
  if not ours and not (holder == '' and attempts == 0) then return false end
end
for k, v in pairs(cjson.decode(A.fields)) do redis.call('HSET', K.record, k, v) end
local expire_at = tonumber(A.expire_at)
redis.call('EXPIREAT', K.record, expire_at)
redis.call('EXPIREAT', K.items, expire_at)
redis.call('EXPIREAT', K.detail, expire_at)
redis.call('EXPIREAT', K.manifests, expire_at)
local owner = redis.call('HGET', K.record, 'owner')
redis.call('SET', K.tomb, owner, 'EXAT', tonumber(A.tomb_expire_at))
redis.call('ZREM', K.queued, A.task_id)
redis.call('ZREM', K.owner_queued, A.task_id)
redis.call('ZREM', K.queue_index, A.task_id)
redis.call('SREM', K.running, A.task_id)
redis.call('DEL', K.lease, K.stored)
redis.call('ZREM', K.unsent, A.task_id)
local started = redis.call('HGET', K.record, 'started_at')
if started then
  redis.call('LPUSH', K.durations, tonumber(A.now) - tonumber(started))
  redis.call('LTRIM', K.durations, 0, tonumber(A.durations_kept) - 1)
end
return state
