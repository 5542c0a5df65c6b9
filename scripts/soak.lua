-- wrk script for scripts/soak.sh: POSTs PHOTO to /labelling/img with KEY
-- and counts the statuses. With RATE > 0 the requests are paced to RATE per
-- second in all (THREADS = wrk's -t): each thread hands out send times on a
-- fixed schedule, so the offered load does not fall when the server slows
-- down, as long as there are idle connections (-c) to send with. Debian's
-- wrk has no fixed-rate mode of its own (that is wrk2).
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } soak_timespec;
int clock_gettime(int clk_id, soak_timespec *tp);
]]
local timespec = ffi.new("soak_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local f = assert(io.open(os.getenv("PHOTO"), "rb"))
local photo = f:read("*all")
f:close()
local boundary = "photolabelsoak"
wrk.method = "POST"
wrk.headers["x-api-key"] = os.getenv("KEY")
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
  .. "Content-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
  .. "Content-Type: image/jpeg\r\n\r\n" .. photo .. "\r\n--" .. boundary .. "--\r\n"

local rate = tonumber(os.getenv("RATE") or "0")
local threads = tonumber(os.getenv("THREADS") or "1")
local interval = 0
if rate > 0 then interval = 1000 * threads / rate end
local next_slot = nil

-- Per thread (each wrk thread has its own Lua state); read back in done().
counts = {}

function delay()
  if interval == 0 then return 0 end
  local now = now_ms()
  -- Slots missed because every connection was busy are dropped, not sent
  -- in a burst later.
  if next_slot == nil or next_slot < now - interval then next_slot = now end
  local wait = next_slot - now
  next_slot = next_slot + interval
  return math.floor(wait)
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

local all_threads = {}
function setup(thread)
  table.insert(all_threads, thread)
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(all_threads) do
    for status, n in pairs(thread:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("wrk_status %d %d\n", status, n))
  end
  local e = summary.errors
  io.write(string.format("wrk_errors connect=%d read=%d write=%d timeout=%d\n",
    e.connect, e.read, e.write, e.timeout))
  io.write(string.format("wrk_rate %.2f\n", summary.requests / (summary.duration / 1e6)))
  io.write(string.format("wrk_latency_ms p50=%.1f p99=%.1f max=%.1f\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
