-- wrk script: one telemetry event per POST, each with its own timestamp and value, so every
-- request is a new fact (no duplicates). Arguments after `--`: <base_timestamp> <threads> <devices>
-- Prints one line "WRKJSON {...}" with the summary and latency percentiles (microseconds).

local thread_count = 0
function setup(thread)
   thread:set("tid", thread_count)
   thread_count = thread_count + 1
end

local base, nthreads, devices, counter = 0, 1, 500, 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   base = tonumber(args[1])
   nthreads = tonumber(args[2])
   devices = tonumber(args[3] or "500")
end

function request()
   local seq = counter * nthreads + tid
   counter = counter + 1
   local body = string.format(
      '{"device_id":%d,"event_type":"platform_extension_mm","value":%d,"timestamp":%.5f}',
      1 + seq % devices, seq % 301 - 150, base + seq * 0.00001)
   return wrk.format("POST", "/ingest", headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
