-- An edit, delete or reaction of a room message (the embedded engine's rules are in
-- store/fold.rs): checked against the stored target (its author, whether it was deleted or
-- erased, who reacted), then sequenced, stored and published like a message. The target's
-- folded state is kept in a hash beside the log (the JSON of core::event::Folded, fields
-- absent when empty). A hard delete removes the target's entry and its edits' from the log
-- (a stream entry cannot be rewritten in place); its state keeps the tombstone.
-- KEYS: meta, log, fold (hash: target seq -> state)
-- ARGV: 1 channel, 2 publish command, 3 JSON up to the seq, 4 JSON after the seq, 5 ts,
--       6 excluded connection ('' for none), 7 max entries ('0': no limit), 8 epoch if the
--       stream starts one, 9 target seq, 10 kind (edit, delete, hard, react, unreact),
--       11 from, 12 '1' for the server API, 13 the edit's body or the emoji, 14 most
--       different emoji on a message, 15 the room
-- KEYS 4, 5 with the event feed (see common.lua).
-- Returns {status, seq, epoch, message}: status 'ok' (seq: the event's), 'noop',
-- 'no_such_message', 'forbidden' (message: why) or 'too_large' (message: the limit).
feed_from(3)
local meta, log, fold = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'epoch') or epoch_of(meta, log, ARGV[8])
local target, kind, from, api = ARGV[9], ARGV[10], ARGV[11], ARGV[12] == '1'
local function refuse(status, why) return {status, 0, epoch, why} end
local raw = redis.call('HGET', fold, target)
local state = raw and cjson.decode(raw)
if state and state.erased then return refuse('no_such_message', 'was erased by a hard delete') end
local entry = redis.call('XRANGE', log, target .. '-0', target .. '-0')[1]
if not entry then
  return refuse('no_such_message', "is not in this room's history (never sent, or trimmed by retention)")
end
local json
for i = 1, #entry[2], 2 do
  if entry[2][i] == 'd' then json = entry[2][i + 1] end
end
-- Names need no escaping, so the author is the text between the quotes; an event names a kind
-- right after its ts.
if string.find(json, '"ts":%d+,"kind":"') then
  return refuse('no_such_message', 'is an edit, delete or reaction, not a message')
end
if not state then
  state = {from = string.match(json, '"from":"([^"]*)"'), ts = tonumber(string.match(json, '"ts":(%d+)'))}
end
state.reactions = state.reactions or {}
state.edits = state.edits or {}
local own = state.from == from
local seq_needed = true
if kind == 'edit' then
  if not own and not api then
    return refuse('forbidden', 'only ' .. state.from .. ' (the author of message ' .. target .. ') may edit it; you may react to it')
  end
  if state.deleted then return refuse('no_such_message', 'was deleted; it cannot be edited') end
  state.body = ARGV[13]
elseif kind == 'delete' or kind == 'hard' then
  if not own and not api then
    return refuse('forbidden', 'only ' .. state.from .. ' (the author of message ' .. target .. ') or the server API may delete it')
  end
  if state.deleted and kind == 'delete' then return {'noop', 0, epoch, ''} end
  state.deleted = true
  state.body = nil
  if kind == 'hard' then
    state.erased = true
    state.reactions = {}
    redis.call('XDEL', log, target .. '-0')
    for _, e in ipairs(state.edits) do redis.call('XDEL', log, e .. '-0') end
  end
elseif kind == 'react' then
  if state.deleted then return refuse('no_such_message', 'was deleted; it cannot be reacted to') end
  local users = state.reactions[ARGV[13]]
  if not users then
    local n = 0
    for _ in pairs(state.reactions) do n = n + 1 end
    if n >= tonumber(ARGV[14]) then return refuse('too_large', ARGV[14]) end
    users = {}
  end
  for _, u in ipairs(users) do
    if u == from then return {'noop', 0, epoch, ''} end
  end
  users[#users + 1] = from
  state.reactions[ARGV[13]] = users
else
  local users = state.reactions[ARGV[13]]
  local at
  for i, u in ipairs(users or {}) do
    if u == from then at = i end
  end
  if not at then return {'noop', 0, epoch, ''} end
  table.remove(users, at)
  if #users == 0 then state.reactions[ARGV[13]] = nil end
end
local seq, text = next_seq(meta)
if kind == 'edit' then
  state.edited = seq
  state.edits[#state.edits + 1] = seq
end
-- cjson writes an empty table as {}: absent instead, as Folded expects.
if next(state.reactions) == nil then state.reactions = nil end
if #state.edits == 0 then state.edits = nil end
redis.call('HSET', fold, target, cjson.encode(state))
local json = ARGV[3] .. text .. ARGV[4]
append(log, seq, text, ARGV[7], ARGV[5], json)
feed('t', ARGV[5], 'e', 'm', 'n', ARGV[15], 's', text, 'd', json)
redis.call(ARGV[2], ARGV[1], 'm ' .. text .. ' ' .. ARGV[6] .. ' ' .. epoch .. '\n' .. json)
return {'ok', seq, epoch, ''}
