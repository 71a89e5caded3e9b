-- The luster library in plain Lua: definitions, their mistakes, error objects.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local luster = require "luster"
local S = luster.schema

local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

describe("luster.rpc", function()
  it("defaults payload to nothing-or-{} and success to any", function()
    local r = luster.rpc("Ping")
    assert.is_true(S.validate(r.payload, nil))
    assert.is_true(S.validate(r.payload, {}))
    assert.is_nil((S.validate(r.payload, { x = 1 })))
    assert.is_true(S.validate(r.success, { anything = true }))
    assert.is_false(r.persisted)
  end)

  it("accepts plain tables as struct schemas", function()
    local r = luster.rpc("Add", { payload = { n = S.integer }, success = S.integer })
    assert.is_true(S.validate(r.payload, { n = 2 }))
    local ok, e = S.validate(r.payload, { n = "x" })
    assert.is_nil(ok)
    assert.are.equal("n: expected integer, got string", e.message)
  end)

  it("rejects tags that are not identifiers", function()
    assert.matches("tag must be an identifier", err_of(luster.rpc, "bad tag"))
    assert.matches("tag must be an identifier", err_of(luster.rpc, 42))
  end)

  it("names unknown options and lists the known ones", function()
    local e = err_of(luster.rpc, "X", { paylod = {} })
    assert.matches("unknown option 'paylod'", e, 1, true)
    assert.matches("payload", e, 1, true)
  end)

  it("requires persisted = true for primary_key and deliver_at", function()
    assert.matches("primary_key needs persisted = true",
      err_of(luster.rpc, "X", { primary_key = function() return "k" end }), 1, true)
    assert.matches("deliver_at must be a function",
      err_of(luster.rpc, "X", { persisted = true, deliver_at = 5 }), 1, true)
  end)

  it("reports a bad schema with the RPC and field", function()
    assert.matches("luster.rpc(X): payload:", err_of(luster.rpc, "X", { payload = 5 }), 1, true)
  end)
end)

describe("luster.entity", function()
  local Inc = luster.rpc("Inc")

  it("keeps options in milliseconds and whole numbers", function()
    local e = luster.entity("E", { Inc }, { max_idle = "30s", concurrency = 4, mailbox = 10 })
    assert.are.same({ max_idle = 30000, concurrency = 4, mailbox = 10 }, e.options)
    assert.are.equal(250, luster.entity("F", { Inc }, { max_idle = 250 }).options.max_idle)
  end)

  it("rejects bad names, duplicate RPCs, bad options", function()
    assert.matches("type name must be", err_of(luster.entity, "a/b", { Inc }))
    assert.matches("RPC 'Inc' is listed twice", err_of(luster.entity, "E", { Inc, Inc }), 1, true)
    assert.matches("rpcs[2] is not a luster.rpc", err_of(luster.entity, "E", { Inc, {} }), 1, true)
    assert.matches("concurrency: expected an integer >= 1, got 0",
      err_of(luster.entity, "E", { Inc }, { concurrency = 0 }), 1, true)
    assert.matches("max_idle: expected a positive duration", err_of(luster.entity, "E", { Inc }, { max_idle = "soon" }))
  end)

  it("turns handlers(activate) into a definition, and refuses a non-function", function()
    local E = luster.entity("E", { Inc })
    local def = E:handlers(function() return { Inc = function() end } end)
    assert.is_true(luster.is_definition(def))
    assert.are.equal("entity", def.kind)
    assert.matches("expected function(ctx, snapshot)", err_of(E.handlers, E, {}), 1, true)
  end)
end)

describe("luster.singleton and luster.cron", function()
  it("define background jobs", function()
    assert.are.equal("singleton", luster.singleton("S", function() end).kind)
    local c = luster.cron("C", "*/5 * * * *", function() end)
    assert.are.equal("cron", c.kind)
    assert.are.equal("*/5 * * * *", c.expr)
  end)

  it("reject a bad cron expression with the job's name", function()
    assert.matches("luster.cron(C): hour field \"25\" is out of range 0-23",
      err_of(luster.cron, "C", "0 25 * * *", function() end), 1, true)
  end)
end)

describe("luster.runtime.definitions", function()
  -- Needs the runner's luster.core; a stand-in makes the module loadable.
  package.preload["luster.core"] = package.preload["luster.core"] or function() return {} end
  local rt = require "luster.runtime"
  local Inc = luster.rpc("Inc")

  it("accepts one definition or an array of them", function()
    local def = luster.entity("A", { Inc }):handlers(function() return {} end)
    assert.are.equal(1, #rt.definitions(def, "a.lua"))
    assert.are.equal(2, #rt.definitions({ def, luster.singleton("S", function() end) }, "a.lua"))
  end)

  it("explains an entity returned without handlers", function()
    local e = err_of(rt.definitions, luster.entity("A", { Inc }), "a.lua")
    assert.matches("a.lua: returned entity A without handlers", e, 1, true)
  end)

  it("explains a script that returns something else", function()
    assert.matches("a.lua: must return an entity definition", err_of(rt.definitions, 42, "a.lua"), 1, true)
    assert.matches("it returned nothing", err_of(rt.definitions, nil, "a.lua"), 1, true)
  end)

  it("refuses one file defining a name twice", function()
    local def = luster.entity("A", { Inc }):handlers(function() return {} end)
    assert.matches("a.lua: defines 'A' twice", err_of(rt.definitions, { def, def }, "a.lua"), 1, true)
  end)
end)

describe("error objects", function()
  it("read well with tostring", function()
    local errors = luster.errors
    local f = errors.from_reply("failure", '{"reason":"insufficient_funds"}')
    assert.are.equal("failure", f.kind)
    assert.are.same({ reason = "insufficient_funds" }, f.value)
    assert.are.equal('failure: {"reason":"insufficient_funds"}', tostring(f))
    local t = errors.from_reply("timeout", '{"kind":"timeout","message":"no reply within 100 ms"}')
    assert.are.equal("timeout: no reply within 100 ms", tostring(t))
    local s = errors.from_reply("schema", '{"kind":"schema","path":"amount","message":"amount: expected number, got string"}')
    assert.are.equal("schema: amount: expected number, got string", tostring(s))
    assert.are.equal("amount", s.path)
  end)
end)

describe("luster.client outside a runner", function()
  it("says a call needs a running runner", function()
    local c = luster.client("Counter", "x")
    assert.matches("needs a running luster runner", err_of(function() return c:Increment { amount = 1 } end), 1, true)
  end)

  it("checks its arguments", function()
    assert.matches("id must not be empty", err_of(luster.client, "Counter", ""), 1, true)
    assert.are.equal("42", luster.client("Counter", 42)[2])
  end)
end)
