-- The generic cell rate algorithm, as gatewaykit.state.memory.gcra.
-- KEYS[1]: the limiter's hash (field "tat": theoretical arrival time).
-- ARGV: limit, window (seconds), burst.
-- Returns {allowed, capacity, remaining, reset_after, retry_after, sec, usec}:
-- durations in nanoseconds and the server time the decision was made at, all
-- integers (the batch script, gatewaykit.state.redis, prints them).
-- Each script here is the body of one function of that batch script.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
-- Redis's clock, so that every gateway node agrees on "now".
local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
local function ns(seconds) return math.floor(seconds * 1e9 + 0.5) end

local capacity = limit + burst
local interval = window / limit
local tolerance = interval * (capacity - 1)
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat'))
if tat == nil or tat < now then
  tat = now
end
if tat - now > tolerance then
  local retry_after = tat - now - tolerance
  return {0, capacity, 0, ns(tat - now), ns(retry_after), sec, usec}
end
tat = tat + interval
local remaining = math.floor((tolerance - (tat - now)) / interval + 1e-9) + 1
remaining = math.max(0, math.min(capacity - 1, remaining))
redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', tat))
redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now + 1) * 1000))
return {1, capacity, remaining, ns(tat - now), 0, sec, usec}
