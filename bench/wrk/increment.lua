-- wrk: POST Increment over 1000 Counter ids, keep-alive.
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/entities/Counter/c" .. (n % 1000) .. "/Increment",
    { ["Content-Type"] = "application/json" }, '{"amount":1}')
end
