-- Where: which runner serves an id (an id's shard, and so its runner,
-- depends on the id alone, whatever the entity type).
local luster = require "luster"
local S = luster.schema

local Ask = luster.rpc("Ask", { payload = {}, success = S.string })
return luster.entity("Where", { Ask }):handlers(function(ctx)
  return { Ask = function() return ctx.runner end }
end)
