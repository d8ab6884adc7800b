-- The running attempt proves it is alive: its lease lives on (and comes back if it lapsed while
-- nobody had requeued the task yet).
--- keys: record lease
--- args: token lease_ms
if redis.call('HGET', K.record, 'holder') ~= A.token then return 0 end
if redis.call('HGET', K.record, 'state') ~= 'RUNNING' then return 0 end
redis.call('SET', K.lease, A.token, 'PX', A.lease_ms)
return 1
