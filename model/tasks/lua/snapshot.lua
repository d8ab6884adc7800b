-- A task's record and, once it has ended (its state one of A.states), its first A.max_items
-- items and how many it has: what GET /status shows, read in one round trip instead of two.
--- keys: record items
--- args: states max_items
local fields = redis.call('HGETALL', K.record)
local state = nil
for i = 1, #fields, 2 do
  if fields[i] == 'state' then state = fields[i + 1] end
end
for _, s in ipairs(cjson.decode(A.states)) do
  if s == state then
    local first = redis.call('LRANGE', K.items, 0, tonumber(A.max_items) - 1)
    return {fields, 1, first, redis.call('LLEN', K.items)}
  end
end
return {fields, 0, {}, 0}
