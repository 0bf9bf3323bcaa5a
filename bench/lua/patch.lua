-- W1: PATCH title + tags of a random conversation. Environment: BENCH_IDS_FILE (one id a line),
-- BENCH_TOKEN, BENCH_PATH_PREFIX (default /api/v1/app-conversations/).
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("common")

local prefix = os.getenv("BENCH_PATH_PREFIX") or "/api/v1/app-conversations/"
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS_FILE")) do
  if #line > 0 then ids[#ids + 1] = line end
end
if #ids == 0 then error("no ids in " .. os.getenv("BENCH_IDS_FILE")) end

local verbs = {"Fix", "Add", "Refactor", "Investigate", "Update", "Speed up", "Document"}
local objects = {"the flaky test", "retry logic", "pagination", "token refresh", "the CI cache", "logging"}
local teams = {"core", "infra", "web", "mobile", "data", "security"}
local priorities = {"p0", "p1", "p2", "p3"}

wrk.method = "PATCH"
wrk.headers["Content-Type"] = "application/json"
common.headers()

local thread_no = 0
function setup(thread)
  thread_no = thread_no + 1
  thread:set("seed", thread_no)
end

local n = 0
function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0) * 7919)
end

function request()
  n = n + 1
  local body = string.format(
    '{"title":"%s %s (%d)","tags":{"team":"%s","priority":"%s","bench":"%d"}}',
    verbs[math.random(#verbs)], objects[math.random(#objects)], n,
    teams[math.random(#teams)], priorities[math.random(#priorities)], math.random(100000))
  return wrk.format(nil, prefix .. ids[math.random(#ids)], nil, body)
end

done = common.done
