-- At most limit + burst per window aligned on multiples of the window, as
-- gatewaykit.state.memory.fixed_window.
-- KEYS[1]: the limiter's hash (fields "w": window number, "c": its count).
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

-- Python's float floor division and modulo, step by step, so that both
-- stores put a request in the same window.
local elapsed = math.fmod(now, window)
local quotient = (now - elapsed) / window
local slot = math.floor(quotient)
if quotient - slot > 0.5 then
  slot = slot + 1
end

local capacity = limit + burst
local reset_after = ns(window - elapsed)
local state = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
if tonumber(state[1]) == slot then
  count = tonumber(state[2]) or 0
end
if count >= capacity then
  return {0, capacity, 0, reset_after, reset_after, sec, usec}
end
count = count + 1
redis.call('HSET', KEYS[1], 'w', string.format('%.17g', slot), 'c', count)
redis.call('PEXPIRE', KEYS[1], math.ceil((window + 1) * 1000))
return {1, capacity, capacity - count, reset_after, 0, sec, usec}
