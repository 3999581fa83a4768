-- Registers a fresh user per request (unique email per thread and counter).
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function request()
  counter = counter + 1
  local body = string.format('{"email":"bench-%d-%d-%d@example.com","password":"bench password"}',
    tid, counter, os.time())
  return wrk.format("POST", "/api/v1/auth/register", { ["Content-Type"] = "application/json" }, body)
end
