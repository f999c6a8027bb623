-- wrk script: one connection per thread (run wrk with -t N -c N), latency kept per answer.
--
-- wrk's own latency histogram mixes every status, and its callbacks carry no connection, so
-- with one connection per thread the request() / response() pair of a thread is one exchange:
-- this script times it with CLOCK_MONOTONIC (LuaJIT's ffi) and keeps 200s apart from 503s.
--
-- Arguments after `--`: <bodies.jsonl> <period_us> <out.tsv>
--   bodies.jsonl  one request body per line, posted round-robin (each thread starts elsewhere)
--   period_us     0: closed loop (send when the answer arrives); otherwise open loop: every
--                 connection sends on a fixed schedule of one request per period, whatever the
--                 answers do. A send that falls behind its slot is counted as "late" so the
--                 caller can tell whether the offered rate was really offered.
--   out.tsv       where done() writes "<status>\t<retry-after>\t<latency_us>\t<sent_us>" per
--                 answer (sent_us: CLOCK_MONOTONIC, to line answers up with server events)
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } magic8_timespec;
int clock_gettime(int clock_id, magic8_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("magic8_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local threads = {}

function setup(thread)
  thread:set("number", #threads)
  table.insert(threads, thread)
end

local requests = {}
local index, period, due, sent_at = 0, 0, 0, 0
out_path = nil
answers = {}
late = 0

function init(args)
  local path = wrk.path
  for line in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("POST", path, {["Content-Type"] = "application/json"}, line)
  end
  period = tonumber(args[2])
  out_path = args[3]
  index = number % #requests
  -- Stagger the threads across one period so arrivals are spread, not in bursts.
  due = now_us() + period * (number % 997) / 997
end

function delay()
  if period == 0 then return 0 end
  local wait = due - now_us()
  if wait < 0 then
    if wait < -1000 then late = late + 1 end
    return 0
  end
  return math.floor(wait / 1000)
end

function request()
  sent_at = now_us()
  if period > 0 then due = due + period end
  index = index % #requests + 1
  return requests[index]
end

function response(status, headers, body)
  local latency = now_us() - sent_at
  local retry = headers["retry-after"] or headers["Retry-After"] or ""
  answers[#answers + 1] = string.format("%d\t%s\t%d\t%d", status, retry, latency, sent_at)
end

function done(summary, latency, requests)
  local out = assert(io.open(threads[1]:get("out_path"), "w"))
  local lateness = 0
  for _, thread in ipairs(threads) do
    for _, line in ipairs(thread:get("answers")) do out:write(line, "\n") end
    lateness = lateness + thread:get("late")
  end
  out:close()
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "late": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, lateness))
end
