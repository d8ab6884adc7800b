-- An item of an attempt that still holds the task, stored once per index: a write retried after
-- its reply was lost (a connection cut as Redis restarts) is not counted twice.
-- A.token: the attempt's ('' no check); A.counter: the record's field to count it in (done,
-- failed); A.index: the item's index ('' none: always stored); K.stored: indices stored.
--- keys: record items stored
--- args: token item counter index
--- uses: held
if not held(K.record, A.token) then return 0 end
if A.index ~= '' and redis.call('SADD', K.stored, A.index) == 0 then return 1 end
redis.call('RPUSH', K.items, A.item)
redis.call('HINCRBY', K.record, A.counter, 1)
return 1
