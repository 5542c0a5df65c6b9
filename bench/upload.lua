-- wrk script: POST one photo to /labelling/img as multipart/form-data.
-- Usage: PHOTO=path KEY=pl_... wrk -t4 -c16 -d60s -s bench/upload.lua http://127.0.0.1:8080/labelling/img
local f = assert(io.open(os.getenv("PHOTO"), "rb"))
local photo = f:read("*all")
f:close()
local boundary = "photolabelbench"
wrk.method = "POST"
wrk.headers["x-api-key"] = os.getenv("KEY")
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
  .. "Content-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
  .. "Content-Type: image/jpeg\r\n\r\n" .. photo .. "\r\n--" .. boundary .. "--\r\n"

done = function(summary, latency, requests)
  io.write(string.format("p50 %.1f ms, p99 %.1f ms\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
