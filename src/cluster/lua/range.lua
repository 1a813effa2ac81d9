-- A page of a stream's log as history reads see it: never an entry MAX or more seqs behind
-- the newest, the ones the publish script has not trimmed yet (`append` in common.lua).
-- KEYS: log. ARGV: 1 'XRANGE' or 'XREVRANGE', 2 lowest seq or '-', 3 highest seq or '+',
--       4 most entries, 5 MAX ('0': no limit)
local log, cmd, lo, hi, max = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
if max > 0 then
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
  if top then
    local first = tonumber(string.match(top[1], '^(%d+)')) - max + 1
    if first > 1 and (lo == '-' or tonumber(lo) < first) then lo = tostring(first) end
  end
end
if lo ~= '-' then lo = lo .. '-0' end
if hi ~= '+' then hi = hi .. '-0' end
if cmd == 'XREVRANGE' then
  return redis.call('XREVRANGE', log, hi, lo, 'COUNT', ARGV[4])
end
return redis.call('XRANGE', log, lo, hi, 'COUNT', ARGV[4])
