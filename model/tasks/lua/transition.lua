-- Move a task to a new state only if its current state is one of the allowed ones; atomic, so a
-- task is finished exactly once even when the job, the reaper and a DELETE race.
--- keys: record
--- args: allowed fields
local state = redis.call('HGET', K.record, 'state')
if not state then return false end
local allowed = cjson.decode(A.allowed)
for _, s in ipairs(allowed) do
  if s == state then
    local fields = cjson.decode(A.fields)
    for k, v in pairs(fields) do redis.call('HSET', K.record, k, v) end
    return state
  end
end
return false
