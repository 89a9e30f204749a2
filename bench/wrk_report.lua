-- wrk script of the keepalive_mw benchmark: prints one JSON line with the figures the
-- benchmark reads (wrk's own text summary is not parsed).
--
-- Unless KAMW_HTTP_KEEPALIVE=1, every request asks for "Connection: close", so each one
-- comes on a new HTTP connection, as from nginx's default proxying (HTTP/1.0 upstream):
-- the kernel's accept queue then spreads requests over the workers, instead of the few
-- keep-alive connections landing on whichever worker accepted them first.
if os.getenv("KAMW_HTTP_KEEPALIVE") ~= "1" then
  wrk.headers["Connection"] = "close"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'KAMW_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
