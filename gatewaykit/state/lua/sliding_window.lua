-- The two-window approximation of a sliding window, as
-- gatewaykit.state.memory.sliding_window: the previous aligned window's
-- count weighted by how much of it still overlaps the last window, plus the
-- current window's count.
-- KEYS[1]: the limiter's hash (fields "w": current window number, "c": its
-- count, "p": the count of the window before it).
-- ARGV: limit, window (seconds), burst.
-- Returns {allowed, capacity, remaining, reset_after, retry_after, sec, usec}
-- (see gcra.lua).
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
local function ns(seconds) return math.floor(seconds * 1e9 + 0.5) end

-- Python's float floor division and modulo (see fixed_window.lua).
local elapsed = math.fmod(now, window)
local quotient = (now - elapsed) / window
local slot = math.floor(quotient)
if quotient - slot > 0.5 then
  slot = slot + 1
end

local capacity = limit + burst
local state = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local stored = tonumber(state[1])
local previous, current = 0, 0
if stored == slot then
  current = tonumber(state[2]) or 0
  previous = tonumber(state[3]) or 0
elseif stored == slot - 1 then
  previous = tonumber(state[2]) or 0
end

local weight = 1.0 - elapsed / window
local estimate = previous * weight + current
local reset_after = ns(window - elapsed)
if estimate + 1 > capacity then
  -- The estimate drops as the previous window slides out; when no previous
  -- weight is left, only the window's end frees room.
  local excess = estimate + 1 - capacity
  local retry_after
  if previous > 0 and excess <= previous * weight then
    retry_after = excess / previous * window
  else
    retry_after = window - elapsed
  end
  return {0, capacity, 0, reset_after, ns(retry_after), sec, usec}
end
current = current + 1
local remaining = math.max(0, math.floor(capacity - (estimate + 1)))
redis.call('HSET', KEYS[1], 'w', string.format('%.17g', slot), 'c', current, 'p', previous)
redis.call('PEXPIRE', KEYS[1], math.ceil((2 * window + 1) * 1000))
return {1, capacity, remaining, reset_after, 0, sec, usec}
