-- The rockspec installs exactly the plugin's modules: a new module that is not listed would be
-- missing from a `luarocks make` install in Kong.

describe("rockspec", function()
  it("lists every module under kong/plugins/tollgate, and only existing files", function()
    local env = {}
    local chunk = assert(loadfile("tollgate-0.1.0-1.rockspec", "t"))
    setfenv(chunk, env)
    chunk()
    assert.equal("tollgate", env.package)
    assert.equal("0.1.0-1", env.version)

    local listed = {}
    for module, path in pairs(env.build.modules) do
      assert.equal(module:gsub("%.", "/") .. ".lua", path)
      listed[path] = true
    end
    local pipe = assert(io.popen("ls kong/plugins/tollgate/*.lua"))
    local found = 0
    for path in pipe:lines() do
      found = found + 1
      assert.is_true(listed[path] == true, path .. " is not in the rockspec")
    end
    pipe:close()
    local n = 0
    for _ in pairs(listed) do n = n + 1 end
    assert.equal(found, n)
  end)
end)
