-- Fields of the record (provenance, summary, total), and the full provenance beside it, from an
-- attempt that still holds the task. A.token: '' no check; A.fields: JSON; A.detail: '' leave
-- it, '-' delete it, else its new value.
--- keys: record detail
--- args: token fields detail
--- uses: held
if not held(K.record, A.token) then return 0 end
for k, v in pairs(cjson.decode(A.fields)) do redis.call('HSET', K.record, k, v) end
if A.detail == '-' then redis.call('DEL', K.detail)
elseif A.detail ~= '' then redis.call('SET', K.detail, A.detail) end
return 1
