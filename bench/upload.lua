-- wrk script: POST photos to /labelling/img as multipart/form-data.
-- One photo:  PHOTO=path KEY=pl_... wrk -t4 -c16 -d60s -s bench/upload.lua http://127.0.0.1:8080/labelling/img
-- Many:       PHOTOS=list.txt (one path a line) cycles through them, each
--             thread starting at a different photo.
-- Prints a human line and a machine-readable `RESULT key=value ...` line.
local boundary = "photolabelbench"
local headers = {
  ["x-api-key"] = os.getenv("KEY"),
  ["Content-Type"] = "multipart/form-data; boundary=" .. boundary,
}

local function read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*all")
  f:close()
  return data
end

local function body(photo)
  return "--" .. boundary .. "\r\n"
    .. "Content-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
    .. "Content-Type: image/jpeg\r\n\r\n" .. photo .. "\r\n--" .. boundary .. "--\r\n"
end

local paths = {}
if os.getenv("PHOTOS") then
  for line in io.lines(os.getenv("PHOTOS")) do
    if line ~= "" then paths[#paths + 1] = line end
  end
else
  paths[1] = assert(os.getenv("PHOTO"), "set PHOTO or PHOTOS")
end

local requests = {}
local next_request = 1
local thread_count = 0

setup = function(thread)
  thread_count = thread_count + 1
  thread:set("offset", thread_count - 1)
end

init = function(args)
  for i, path in ipairs(paths) do
    requests[i] = wrk.format("POST", nil, headers, body(read(path)))
  end
  next_request = ((offset or 0) * 7) % #requests + 1
end

request = function()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("p50 %.1f ms, p99 %.1f ms\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.2f p50_ms=%.1f p99_ms=%.1f non2xx=%d socket_errors=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
