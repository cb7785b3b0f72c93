-- wrk script of scripts/rolling-restart.sh: session next-words ("one ,": two tokens each) on
-- the sessions listed in the file given after `--`, each thread on its own share of them, in
-- turn. Every answer's session and tokens_seen are kept, so that the script can tell whether
-- any request was lost or applied twice; done() prints one JSON line: "RESULT {...}".
local threads = {}
local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local all = {}
  for line in io.lines(args[1]) do
    all[#all + 1] = line
  end
  local nthreads = tonumber(args[2])
  mine = {}
  for i = index + 1, #all, nthreads do
    mine[#mine + 1] = all[i]
  end
  turn = 0
  seen = {}      -- session id -> "n1,n2,..." (the tokens_seen of each of its answers)
  statuses = {}  -- status -> count
  bodies = {}    -- status -> the first body of each status other than 200
end

function request()
  turn = turn % #mine + 1
  return wrk.format("POST", "/v1/sessions/" .. mine[turn] .. "/next-word",
    {["Content-Type"] = "application/json"}, '{"text": "one ,"}')
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 200 then
    local sid = body:match('"session_id":"([^"]+)"')
    local n = body:match('"tokens_seen":(%d+)')
    seen[sid] = (seen[sid] and seen[sid] .. "," or "") .. n
  elseif bodies[key] == nil then
    bodies[key] = body
  end
end

local function quote(s)
  return '"' .. s:gsub('\\', '\\\\'):gsub('"', '\\"'):gsub('\n', '\\n') .. '"'
end

function done(summary, latency, requests)
  local parts = {}
  local stats, sessions, firsts = {}, {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("statuses")) do stats[k] = (stats[k] or 0) + v end
    for k, v in pairs(thread:get("seen")) do sessions[#sessions + 1] = quote(k) .. ":[" .. v .. "]" end
    for k, v in pairs(thread:get("bodies")) do firsts[#firsts + 1] = quote(k) .. ":" .. quote(v) end
  end
  local s = {}
  for k, v in pairs(stats) do s[#s + 1] = quote(k) .. ":" .. v end
  local e = summary.errors
  io.write("RESULT {",
    '"requests":', summary.requests, ',"seconds":', summary.duration / 1e6,
    ',"errors":{"connect":', e.connect, ',"read":', e.read, ',"write":', e.write,
    ',"timeout":', e.timeout, ',"status":', e.status, '}',
    ',"latency_ms":{"p50":', latency:percentile(50) / 1000, ',"p99":', latency:percentile(99) / 1000,
    ',"max":', latency.max / 1000, '}',
    ',"statuses":{', table.concat(s, ","), '}',
    ',"bodies":{', table.concat(firsts, ","), '}',
    ',"sessions":{', table.concat(sessions, ","), '}}\n')
end
