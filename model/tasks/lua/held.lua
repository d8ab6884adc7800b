-- Checks shared by the writes of an attempt: the record's holder must still be its token
-- ('' : no check).
local function held(record, token)
  return token == '' or redis.call('HGET', record, 'holder') == token
end
