-- GET one fixed path (W2 first/deep page, W3, W5). Environment: BENCH_PATH, BENCH_TOKEN.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("common")

wrk.method = "GET"
wrk.path = os.getenv("BENCH_PATH")
common.headers()

done = common.done
