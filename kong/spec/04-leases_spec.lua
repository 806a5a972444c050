-- leases.lua against a stand-in shared dict (spec/helpers/fake_shdict.lua) and a scripted Tollgate:
-- every POST /v1/leases is recorded and answered from a queue of JSON answers shaped like
-- collector-processor/src/enforcement/leases.ts writes them (contracts/src/leases.ts).

local leases = require "kong.plugins.tollgate.leases"
local fake_shdict = require "fake_shdict"
local cjson = require "cjson.safe"

local NULL = cjson.null
local LEASE = "ls_0123456789abcdef01234567"
local LEASE2 = "ls_abcdefabcdefabcdefabcdef"
local PRICE = 10000000

local function grant(fields)
  local g = {
    leaseId = LEASE, customer = "acme", currency = "USD", expiresUnixMs = 1000000 + 30000,
    calls = 3, money = NULL, tools = {}, sessions = {}, limitedTools = {}, sessionLimited = false,
    prices = { search = tostring(PRICE) }, defaultPrice = tostring(PRICE),
  }
  for k, v in pairs(fields or {}) do
    g[k] = v
  end
  return { ok = true, lease = g }
end

-- env with a clock at 1,000,000 ms; answers: list of { status, result } or { err = "..." }
local function setup(answers, conf, capacity)
  local t = { now = 1000000, posts = {}, answers = answers or {}, logs = {} }
  t.conf = { product = "demo", lease_timeout_ms = 250, fault_tolerant = true }
  for k, v in pairs(conf or {}) do
    t.conf[k] = v
  end
  t.shm = fake_shdict.new(function() return t.now end, capacity)
  t.tracked = {}
  t.env = {
    shm = t.shm,
    now_ms = function() return t.now end,
    sleep = function(s) t.now = t.now + s * 1000 end,
    node_id = "node-1",
    endpoint = function() return "http://tollgate:4318/v1/leases" end,
    headers = function() return { Authorization = "Bearer k" } end,
    log = function(level, ...) t.logs[#t.logs + 1] = level .. ": " .. table.concat({ ... }) end,
    post = function(url, headers, body, timeout_ms)
      t.posts[#t.posts + 1] = { url = url, body = cjson.decode(body), timeout_ms = timeout_ms }
      local a = table.remove(t.answers, 1)
      if not a then
        return nil, "connection refused"
      end
      if a.delay_ms and a.delay_ms > timeout_ms then
        -- an answer later than the request's timeout is never read: the socket times out (resty.http)
        t.now = t.now + timeout_ms
        return nil, "timeout"
      end
      if a.delay_ms then
        t.now = t.now + a.delay_ms
      end
      if a.err then
        return nil, a.err
      end
      return a.status or 200, nil, cjson.encode({ results = { a.result } })
    end,
  }
  t.env.track = function(c, customer)
    t.tracked[leases.key_of(c.product, customer)] = { env = t.env, conf = c, customer = customer }
  end
  return t
end

local function take(t, tools)
  return leases.take(t.env, t.conf, "acme", tools or { "search" })
end

describe("leases.take", function()
  it("asks for a lease when it has none, then draws on it without I/O and never past what was granted", function()
    local t = setup({ { result = grant() } })
    local r = assert(take(t))
    assert.equal(LEASE, r.lease)
    assert.same({ PRICE }, r.reserved)
    assert.equal(1, #t.posts)
    -- no price known before the first answer: it asks for one call and the least money
    assert.same({ op = "grant", customer = "acme", wantCalls = 1, wantMoney = "1",
                  minMoney = "0" }, t.posts[1].body.requests[1])
    assert.equal("node-1", t.posts[1].body.instanceId)
    assert(take(t))
    assert(take(t))
    assert.equal(1, #t.posts, "calls 2 and 3 took from the lease")
    -- the 4th needs a renewal: the answer grants nothing more and says the limit is spent
    t.answers[1] = { result = grant({ calls = 3, exhausted = { { scope = "customer", id = "acme",
                     reason = "hard_limit:calls_per_day", untilUnixMs = 1000000 + 3600 * 1000 } } }) }
    local nope, d = take(t)
    assert.is_nil(nope)
    assert.same({ action = "kill", scope = "customer", reason = "hard_limit:calls_per_day",
                  until_ms = 1000000 + 3600 * 1000, retry_after = 3600, enforcement = "lease_exhausted" }, d)
    local renewal = t.posts[2].body.requests[1]
    assert.equal(LEASE, renewal.leaseId)
    assert.equal(3, renewal.consumedCalls)
    assert.equal("0", renewal.consumedMoney, "money is not limited for this customer: nothing taken")
    assert.equal(2 * 3 + 1, renewal.wantCalls, "twice what went since the grant, plus the call waiting")
    assert.equal(tostring(PRICE), renewal.minMoney)
    -- refused again without asking, for a moment
    assert.is_nil((take(t)))
    assert.equal(2, #t.posts)
    local s = leases.stats(t.shm)
    assert.equal(3, s.taken)
    assert.equal(2, s.refused)
    assert.equal(2, s.sync_renewals)
  end)

  it("money: a batch takes the sum of its known prices, all or nothing", function()
    local t = setup({ { result = grant({ calls = NULL, money = tostring(2 * PRICE + 5) }) } })
    local r = assert(take(t, { "search", "other" }))
    assert.same({ PRICE, PRICE }, r.reserved)
    assert.equal(2 * PRICE, r.money)
    t.answers[1] = { result = grant({ calls = NULL, money = tostring(2 * PRICE + 5),
                     exhausted = { { scope = "customer", id = "acme", reason = "hard_limit:spend_per_period",
                                     untilUnixMs = 0 } } }) }
    local nope, d = take(t)
    assert.is_nil(nope)
    assert.equal("hard_limit:spend_per_period", d.reason)
    assert.is_nil(d.retry_after)
    assert.equal(2 * PRICE, t.shm:get(LEASE .. "|tm"), "the refused call took nothing")
  end)

  it("learns the prices from the first answer and asks again for the price of the call waiting", function()
    local t = setup({ { result = grant({ calls = NULL, money = "1" }) },
                      { result = grant({ calls = NULL, money = tostring(PRICE + 1) }) } })
    local r = assert(take(t))
    assert.equal(LEASE, r.lease)
    assert.equal(2, #t.posts)
    assert.equal(tostring(PRICE), t.posts[2].body.requests[1].minMoney)
  end)

  it("a customer without hard limits gets no lease: calls pass without one until the answer lapses", function()
    local t = setup({ { result = grant({ leaseId = "", calls = NULL, money = NULL }) } })
    local r = assert(take(t))
    assert.is_nil(r.lease)
    assert(take(t))
    assert.equal(1, #t.posts)
  end)

  it("Tollgate unreachable: fault_tolerant passes the call without a lease, and does not ask again for 1 s", function()
    local t = setup({ { err = "connection refused" } })
    local r = assert(take(t))
    assert.is_nil(r.lease)
    assert.equal("lease_unavailable", r.enforcement)
    assert(take(t))
    assert.equal(1, #t.posts)
    t.now = t.now + 1001
    t.answers[1] = { result = grant() }
    assert.equal(LEASE, assert(take(t)).lease)
    local s = leases.stats(t.shm)
    assert.equal(2, s.fail_open)
    assert.equal(1, s.failures)
  end)

  it("Tollgate unreachable and fault_tolerant = false: refused as unavailable (503, -32052)", function()
    local t = setup({ { status = 503, result = {} } }, { fault_tolerant = false })
    local nope, d = take(t)
    assert.is_nil(nope)
    assert.equal("unavailable", d.action)
    assert.equal("lease_unavailable", d.reason)
    assert.equal(1, leases.stats(t.shm).fail_closed)
  end)

  it("no answer within lease_timeout_ms: counted as a timeout, then the policy", function()
    local t = setup({ { delay_ms = 300, err = "timeout" } }, { fault_tolerant = false })
    local nope, d = take(t)
    assert.is_nil(nope)
    assert.equal("unavailable", d.action)
    assert.equal(250, t.posts[1].timeout_ms)
    assert.equal(1, leases.stats(t.shm).timeouts)
  end)

  it("the first answer about a customer is waited for up to lease_first_timeout_ms, later ones lease_timeout_ms", function()
    -- a Tollgate answering 600 ms late: with lease_timeout_ms alone the call would pass unleased
    local t = setup({ { delay_ms = 600, result = grant({ calls = 1 }) },
                      { delay_ms = 600, result = grant({ calls = 1 }) } },
                    { lease_first_timeout_ms = 2000 })
    assert.equal(LEASE, assert(take(t)).lease)
    assert.equal(2000, t.posts[1].timeout_ms)
    -- the customer is known now: the next empty lease waits lease_timeout_ms
    local r = assert(take(t))
    assert.equal("lease_unavailable", r.enforcement)
    assert.equal(250, t.posts[2].timeout_ms)
  end)

  it("a first wait that ran out (Tollgate hangs) is not repeated: the next first calls wait lease_timeout_ms", function()
    local t = setup({ { delay_ms = 5000, result = grant() }, { delay_ms = 5000, result = grant() } },
                    { lease_first_timeout_ms = 2000 })
    local start = t.now
    assert.equal("lease_unavailable", assert(take(t)).enforcement)
    assert.equal(2000, t.now - start)
    t.now = t.now + 1000 -- past the failure's DOWN_S
    assert.equal("lease_unavailable", assert(take(t)).enforcement)
    assert.equal(250, t.posts[2].timeout_ms)
  end)

  it("each answer in time gives the wait another lease_timeout_ms, up to four: a burst needing three answers is covered", function()
    -- every answer 200 ms late (under 250) grants one call; the call needs the third
    local t = setup({ { delay_ms = 200, result = grant({ calls = 1 }) } })
    assert.equal(LEASE, assert(take(t)).lease)
    -- the lease's calls are cumulative: two answers that add nothing, then one that adds a call
    t.answers = { { delay_ms = 200, result = grant({ calls = 1 }) },
                  { delay_ms = 200, result = grant({ calls = 1 }) },
                  { delay_ms = 200, result = grant({ calls = 2 }) } }
    assert.equal(LEASE, assert(take(t)).lease)
    assert.equal(4, #t.posts)
  end)

  it("HTTP 404 (a Tollgate without leases): calls pass, enforced per export, asked again after 60 s", function()
    local t = setup({ { status = 404, result = {} } })
    local r = assert(take(t))
    assert.is_nil(r.lease)
    assert.is_nil(r.enforcement)
    t.now = t.now + 59000
    assert(take(t))
    assert.equal(1, #t.posts)
    assert.equal(1, leases.stats(t.shm).no_leases)
  end)

  it("a lease Tollgate no longer knows (lapsed, released) is replaced by a new one", function()
    local t = setup({ { result = grant({ calls = 1 }) },
                      { result = { ok = false, error = { code = "TG_LEASE_UNKNOWN", message = "gone" } } },
                      { result = grant({ leaseId = LEASE2, calls = 2 }) } })
    assert.equal(LEASE, assert(take(t)).lease)
    assert.equal(LEASE2, assert(take(t)).lease)
    assert.is_nil(t.posts[3].body.requests[1].leaseId)
  end)

  it("stops drawing on a lease SETTLE_MARGIN_MS before it lapses", function()
    local t = setup({ { result = grant({ calls = 100 }) } })
    assert(take(t))
    t.now = 1000000 + 30000 - leases.SETTLE_MARGIN_MS
    t.answers[1] = { result = grant({ calls = 100, expiresUnixMs = t.now + 30000 }) }
    assert(take(t))
    assert.equal(2, #t.posts)
  end)

  it("a kill ends the lease: nothing more is drawn on what it granted before", function()
    local t = setup({ { result = grant({ calls = 5 }) } })
    assert(take(t))
    local K = leases.key_of("demo", "acme")
    -- collector-processor/src/enforcement/leases.ts answers a renewal refused by a kill like this
    t.answers[1] = { result = grant({ calls = 0, money = "0", expiresUnixMs = t.now,
                                      exhausted = { { scope = "customer", id = "acme", reason = "operator_kill",
                                                      untilUnixMs = 0 } } }) }
    leases.renew(t.env, t.conf, "acme", 0, 0, "background_renewals")
    t.answers[1] = nil
    assert.is_nil(t.shm:get(K .. "|cur"))
    local nope, d = take(t)
    assert.is_nil(nope)
    assert.equal("operator_kill", d.reason)
    assert.equal(1, t.shm:get(LEASE .. "|tc"), "the lease's taken count stays for its settlement")
  end)

  it("a renewal asks for every call waiting on the node, not only its own", function()
    local t = setup({ { result = grant({ calls = 8 }) } })
    local K = leases.key_of("demo", "acme")
    t.shm:incr(K .. "|wc", 7, 0) -- seven calls of other workers wait for this answer
    assert(take(t))
    assert.equal(8, t.posts[1].body.requests[1].wantCalls)
    assert.equal(7, t.shm:get(K .. "|wc"), "its own wait is counted off again")
  end)

  it("a lease stored by another worker while a call reads its price: the call still takes what it costs", function()
    -- nginx workers share the dict: another worker's answer (prices first, then the lease id) can land
    -- between a call's reads; a price read before the id could be the 0 of "not known yet" while the id read
    -- after it is the new lease, and the call would draw on the money granted without taking any
    local t = setup({ { result = grant({ calls = NULL, money = tostring(7 * PRICE) }) },
                      { result = grant({ calls = NULL, money = tostring(7 * PRICE) }) } })
    local K = leases.key_of("demo", "acme")
    local get = t.shm.get
    local landed = false
    t.shm.get = function(self, key)
      local v = get(self, key)
      if not landed and key == K .. "|pd" then
        landed = true -- right after this read, the other worker's answer lands
        leases.renew(t.env, t.conf, "acme", 1, PRICE, "sync_renewals")
      end
      return v
    end
    local r = assert(take(t))
    assert.is_true(landed)
    assert.equal(LEASE, r.lease)
    assert.equal(PRICE, r.money)
    assert.equal(PRICE, t.shm:get(LEASE .. "|tm"), "the call took its price from the lease")
  end)

  it("a take that does not fit adds nothing to the lease, so a renewal reports only what its calls took", function()
    -- another worker's renewal can read the counter at any time: an increment past the grant, even undone at
    -- once, would be reported to Tollgate as consumed
    local t = setup({ { result = grant({ calls = NULL, money = tostring(5 * PRICE) }) },
                      { result = grant({ calls = NULL, money = tostring(6 * PRICE) }) } })
    for _ = 1, 5 do assert(take(t)) end
    local incr = t.shm.incr
    local past = 0
    t.shm.incr = function(self, key, n, ...)
      local v = incr(self, key, n, ...)
      if key == LEASE .. "|tm" and n > 0 and v > self:get(LEASE .. "|gm") then past = past + 1 end
      return v
    end
    assert(take(t)) -- the lease is full: renewed, then taken from the larger grant
    assert.equal(0, past, "no increment went past the grant")
    assert.equal(tostring(5 * PRICE), t.posts[2].body.requests[1].consumedMoney)
  end)

  it("a take in flight on another worker, past the grant, is not reported as consumed", function()
    -- 5.5 calls' worth granted, 5 taken; another worker's take has just added its price (6 calls' worth, past
    -- the grant) and will undo it. Reported as consumed, it made Tollgate answer "exhausted" while half a
    -- call's worth remained here and more was left under the limit, and that answer refused every call for
    -- half a second (6 of 7 ran in a CI run of the integration burst)
    local t = setup({ { result = grant({ calls = NULL, money = tostring(11 * PRICE / 2) }) },
                      { result = grant({ calls = NULL, money = tostring(13 * PRICE / 2) }) } })
    for _ = 1, 5 do assert(take(t)) end
    t.shm:incr(LEASE .. "|tm", PRICE) -- the other worker's take, not yet undone
    assert.equal("ok", leases.renew(t.env, t.conf, "acme", 1, PRICE, "sync_renewals"))
    local reported = tonumber(t.posts[2].body.requests[1].consumedMoney)
    assert.is_true(reported <= 11 * PRICE / 2, "reported " .. reported .. ": never more than was granted")
    assert.is_true(reported >= 5 * PRICE, "and never less than the calls took")
    t.shm:incr(LEASE .. "|tm", -PRICE) -- undone
    assert(take(t), "the grant covers the next call")
  end)

  it("another worker renewing: waits for its answer instead of asking too", function()
    local t = setup({ { result = grant() } })
    local K = leases.key_of("demo", "acme")
    t.shm:add(K .. "|lock", true, 1)
    local sleeps = 0
    t.env.sleep = function(s)
      sleeps = sleeps + 1
      t.now = t.now + s * 1000
      if sleeps == 3 then
        -- the other worker's answer lands
        leases.renew(t.env, t.conf, "acme", 1, 0, "sync_renewals")
        t.shm:delete(K .. "|lock")
      end
    end
    assert.equal(LEASE, assert(take(t)).lease)
    assert.equal(1, #t.posts)
  end)
end)

describe("leases: renewal ahead of time, give back, release", function()
  it("the background tick renews a lease that is running low, reporting what was consumed", function()
    local t = setup({ { result = grant({ calls = 4 }) } })
    for _ = 1, 3 do
      assert(take(t))
    end
    assert.is_true(leases.wants_renewal(t.shm, leases.key_of("demo", "acme"), t.now))
    t.answers[1] = { result = grant({ calls = 10 }) }
    leases.tick(t.tracked)
    assert.equal(2, #t.posts)
    assert.equal(3, t.posts[2].body.requests[1].consumedCalls)
    assert.equal(6, t.posts[2].body.requests[1].wantCalls)
    assert.equal(1, leases.stats(t.shm).background_renewals)
    assert.matches('^notice: tollgate: quota leases of this node: {.*"taken":3', t.logs[1])
    leases.tick(t.tracked)
    assert.equal(1, #t.logs, "the counters are logged once a minute")
    assert.is_false(leases.wants_renewal(t.shm, leases.key_of("demo", "acme"), t.now))
    for _ = 1, 7 do
      assert(take(t))
    end
    assert.equal(2, #t.posts)
  end)

  it("an idle lease is not renewed: it lapses and its allowance goes back", function()
    local t = setup({ { result = grant({ calls = 4 }) } })
    assert(take(t))
    t.answers[1] = { result = grant({ calls = 4 }) }
    leases.tick(t.tracked) -- 1 of 4 taken: nothing to do yet
    assert.equal(1, #t.posts)
    t.now = t.now + 11000 -- a third of its life
    leases.tick(t.tracked)
    assert.equal(2, #t.posts, "used since its grant: renewed")
    t.now = t.now + 11000
    leases.tick(t.tracked)
    assert.equal(2, #t.posts, "idle since: left to lapse")
  end)

  it("give_back returns what a call took when it never reached the tool", function()
    local t = setup({ { result = grant({ calls = 1, money = tostring(PRICE) }) } })
    local r = assert(take(t))
    leases.give_back(t.env, r, 1)
    assert(take(t))
    assert.equal(1, #t.posts)
  end)

  it("release_all gives back what was not consumed and stops every worker drawing on the lease", function()
    local t = setup({ { result = grant({ calls = 5, money = tostring(5 * PRICE) }) },
                      { result = { ok = true, lease = {} } } })
    assert(take(t))
    assert(take(t))
    leases.release_all(t.tracked)
    assert.same({ op = "release", customer = "acme", leaseId = LEASE, consumedCalls = 2, consumedMoney = tostring(2 * PRICE) },
                t.posts[2].body.requests[1])
    assert.equal(1, leases.stats(t.shm).releases)
    -- a worker still holding the lease id draws nothing more from it
    t.shm:set(leases.key_of("demo", "acme") .. "|cur", LEASE)
    local nope = take(t)
    assert.is_nil(nope and nope.lease)
  end)

  it("a full dict never loses what a lease has taken: the lease is not held, the fail policy applies", function()
    -- room for the counters, the waiting count and the prices, not for the lease itself
    local t = setup({ { result = grant({ calls = 5 }) } }, { fault_tolerant = false }, 6)
    local nope, d = take(t)
    assert.is_nil(nope)
    assert.equal("unavailable", d.action)
    assert.truthy(t.logs[1]:find("lease_shm is full", 1, true))
  end)

  it("endpoint: lease_endpoint, else billing_endpoint's /v1/traces as /v1/leases", function()
    assert.equal("http://a/v1/leases", leases.endpoint({ lease_endpoint = "http://a/v1/leases" }))
    assert.equal("https://tg:4318/v1/leases", leases.endpoint({ billing_endpoint = "https://tg:4318/v1/traces" }))
  end)
end)
