-- greeter_spec.lua - `luster test` runs this against the real runtime, on a
-- virtual clock, with a fresh runtime for each `it`.
local T = require "luster.test"

describe("Greeter", function()
  it("greets by name and counts the visits", function()
    local ada = T.client("Greeter", "ada")
    assert.are.same({ message = "Hello, ada!", visits = 1 }, ada:Greet {})
    assert.are.same({ message = "Hi, ada!", visits = 2 }, ada:Greet { greeting = "Hi" })
    assert.are.equal(0, T.client("Greeter", "bob"):Visits())
  end)

  it("is passivated after 30 s idle and keeps its visits in its snapshot", function()
    local ada = T.client("Greeter", "ada")
    ada:Greet {}
    T.advance(29000)                          -- virtual time: returns at once
    assert.is_true(T.active("Greeter", "ada"))
    T.advance(2000)
    assert.is_false(T.active("Greeter", "ada"))
    assert.are.equal(1, ada:Visits())         -- activated again from the saved state
  end)

  it("refuses a greeting longer than 40 characters", function()
    local value, err = T.client("Greeter", "ada"):Greet { greeting = string.rep("x", 41) }
    assert.is_nil(value)
    assert.are.equal("schema", err.kind)
  end)
end)
