-- W3C Trace Context's traceparent header (core/trace.c) and the latency
-- histograms of /metrics (core/histo.c), through build/luster_core.so.
package.path = "spec/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local core = require("luster_core")
local H = require "support.helpers"

local TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
local SPAN = "00f067aa0ba902b7"
local VALID = "00-" .. TRACE .. "-" .. SPAN .. "-01"

describe("traceparent", function()
  it("reads the trace id, the parent span id and the flags of a version 00 header", function()
    assert.are.same({ trace_id = TRACE, span_id = SPAN, flags = 1 }, core.traceparent(VALID))
    assert.are.same({ trace_id = TRACE, span_id = SPAN, flags = 0 },
      core.traceparent("00-" .. TRACE .. "-" .. SPAN .. "-00"))
  end)

  it("ignores spaces and tabs around the value", function()
    assert.are.equal(TRACE, core.traceparent(" \t" .. VALID .. "  ").trace_id)
  end)

  it("prints back exactly the header it read", function()
    assert.are.equal(VALID, core.traceparent_format(VALID))
  end)

  it("refuses what the format calls invalid", function()
    local bad = {
      ["empty"] = "",
      ["too short"] = VALID:sub(1, 54),
      ["version 00 with more after the flags"] = VALID .. "-xyz",
      ["version 00 with one more character"] = VALID .. "0",
      ["version ff"] = "ff" .. VALID:sub(3),
      ["uppercase hex in the trace id"] = "00-" .. TRACE:upper() .. "-" .. SPAN .. "-01",
      ["uppercase hex in the version"] = "0A" .. VALID:sub(3),
      ["an all-zero trace id"] = "00-" .. ("0"):rep(32) .. "-" .. SPAN .. "-01",
      ["an all-zero span id"] = "00-" .. TRACE .. "-" .. ("0"):rep(16) .. "-01",
      ["a missing separator"] = "00_" .. VALID:sub(4),
      ["a short trace id"] = "00-" .. TRACE:sub(2) .. "-" .. SPAN .. "-01",
      ["a non-hex flag"] = VALID:sub(1, 53) .. "0g",
      ["a later version followed by a non-separator"] = "01" .. VALID:sub(3) .. "x",
    }
    for why, value in pairs(bad) do
      local t, err = core.traceparent(value)
      assert.is_nil(t, why)
      assert.matches("invalid traceparent", err, 1, true)
    end
  end)

  it("reads a later version by version 00's fields, ignoring what it appends after a '-'", function()
    local later = "cc-" .. TRACE .. "-" .. SPAN .. "-01-what-the-future-adds"
    assert.are.same({ trace_id = TRACE, span_id = SPAN, flags = 1 }, core.traceparent(later))
    assert.are.equal(VALID, core.traceparent_format(later))
    assert.are.equal(TRACE, core.traceparent("cc-" .. TRACE .. "-" .. SPAN .. "-01").trace_id)
  end)
end)

describe("a latency histogram", function()
  it("counts each duration in the first bucket whose bound is not below it, cumulatively", function()
    -- 25 µs is the first bound: a duration equal to a bound belongs to it.
    local text = core.histogram("x_seconds", "", { 25000, 25001, 900000, 12 * 10 ^ 9 // 1 })
    assert.matches('x_seconds_bucket{le="0.000025"} 1\n', text, 1, true)
    assert.matches('x_seconds_bucket{le="0.00005"} 2\n', text, 1, true)
    assert.matches('x_seconds_bucket{le="0.0005"} 2\n', text, 1, true)
    assert.matches('x_seconds_bucket{le="0.001"} 3\n', text, 1, true)
    assert.matches('x_seconds_bucket{le="10"} 3\n', text, 1, true)
    assert.matches('x_seconds_bucket{le="+Inf"} 4\n', text, 1, true)
    assert.matches('\nx_seconds_count 4\n', text, 1, true)
    assert.matches('\nx_seconds_sum 12.000950001\n', text, 1, true)
  end)

  it("puts the labels before le, and on the sum and count", function()
    local text = core.histogram("luster_rpc_duration_seconds", 'type="Counter",rpc="Get"', { 1000 })
    assert.matches('luster_rpc_duration_seconds_bucket{type="Counter",rpc="Get",le="0.000025"} 1\n', text, 1, true)
    assert.matches('luster_rpc_duration_seconds_sum{type="Counter",rpc="Get"} 0.000001\n', text, 1, true)
    assert.matches('luster_rpc_duration_seconds_count{type="Counter",rpc="Get"} 1\n', text, 1, true)
  end)

  it("writes what promtool accepts as a histogram family", function()
    local page = "# HELP luster_rpc_duration_seconds Handler time per RPC.\n"
      .. "# TYPE luster_rpc_duration_seconds histogram\n"
      .. core.histogram("luster_rpc_duration_seconds", 'type="Counter",rpc="Get"', { 1000, 2 * 10 ^ 6 // 1 })
      .. core.histogram("luster_rpc_duration_seconds", 'type="Counter",rpc="Increment"', {})
    local file = H.tmpname()
    H.write_file(file, page)
    local p = io.popen("promtool check metrics < " .. H.sh_quote(file) .. " 2>&1; echo rc=$?")
    local out = p:read("a")
    p:close()
    os.remove(file)
    assert.matches("rc=0\n$", out, 1, false)
  end)
end)
