-- End-of-message replies of the content checks through Debian's miltertest.
-- Run as: miltertest -D socket=unix:/path -s content.lua against a service with
-- limits.max_message_size = 1000000 and limits.max_attachment_size = 50000.

local function check(cond, msg)
    if not cond then
        error(msg, 2)
    end
end

local function message(headers)
    local conn = mt.connect(socket, 40, 0.05)
    check(conn ~= nil, "cannot connect to " .. socket)
    check(mt.macro(conn, SMFIC_CONNECT, "v", "Postfix 3.7.11") == nil, "macro")
    check(mt.conninfo(conn, "[198.51.100.7]", "198.51.100.7") == nil, "conninfo")
    check(mt.helo(conn, "mail.sender.example") == nil, "helo")
    check(mt.mailfrom(conn, "<friend@sender.example>") == nil, "mailfrom")
    check(mt.getreply(conn) == SMFIR_CONTINUE, "mail refused")
    check(mt.rcptto(conn, "<alice@example.com>") == nil, "rcptto")
    check(mt.getreply(conn) == SMFIR_CONTINUE, "rcpt refused")
    check(mt.data(conn) == nil, "data")
    -- No mt.eoh: smtpguard negotiates end-of-headers away (SMFIP_NOEOH) and
    -- miltertest, like Postfix, then refuses to send it.
    -- miltertest offers SMFIP_HDR_LEADSPC and smtpguard takes it: a value goes as
    -- written after the colon, its space included, as Postfix then sends it.
    for _, h in ipairs(headers) do
        check(mt.header(conn, h[1], " " .. h[2]) == nil, "header " .. h[1])
    end
    return conn
end

local function body(conn, chunks)
    for _, chunk in ipairs(chunks) do
        check(mt.bodystring(conn, chunk) == nil, "body")
        if mt.getreply(conn) ~= SMFIR_CONTINUE then
            break -- SMFIR_SKIP: a verdict waits for end of message
        end
    end
end

-- libmilter refuses packets over 64 KiB: cut long strings into chunks.
local function pieces(text, size)
    local out = {}
    for i = 1, #text, size do
        out[#out + 1] = string.sub(text, i, i + size - 1)
    end
    return out
end

local function expect_eom(conn, name, code, xcode, text)
    check(mt.eom(conn) == nil, name .. ": eom")
    check(mt.getreply(conn) == SMFIR_REPLYCODE, name .. ": no reply code at eom")
    check(mt.eom_check(conn, MT_SMTPREPLY, code, xcode, text), name .. ": wrong reply text")
    mt.disconnect(conn)
    mt.echo("ok " .. name)
end

local base = {
    {"From", "friend@sender.example"},
    {"To", "alice@example.com"},
    {"Subject", "test"},
}
local received = "from mail.sender.example (mail.sender.example [198.51.100.7]) " ..
    "by mx.example.com (Postfix) with ESMTP id 4F1A; Sat, 28 Nov 2026 17:00:00 +0000"

local function with(extra)
    local out = {}
    for _, h in ipairs(extra) do out[#out + 1] = h end
    for _, h in ipairs(base) do out[#out + 1] = h end
    return out
end

local function main()
    -- A clean message is accepted and gets the loop marker.
    local conn = message(with({{"Received", received}}))
    body(conn, {"Hello Alice.\r\n"})
    check(mt.eom(conn) == nil, "clean: eom")
    -- With SMFIP_HDR_LEADSPC the space after the colon is the milter's to send.
    check(mt.eom_check(conn, MT_HDRADD, "X-Smtpguard-Loop", " mx.example.com"),
          "clean: loop marker not added")
    check(not mt.eom_check(conn, MT_SMTPREPLY, "552", "5.4.6",
                           "looping message. (环回信件)"), "clean: refused")
    mt.disconnect(conn)
    mt.echo("ok clean")

    local hops = {}
    for i = 1, 31 do hops[i] = {"Received", received} end
    conn = message(with(hops))
    body(conn, {"hi\r\n"})
    expect_eom(conn, "looping_message", "552", "5.4.6", "looping message. (环回信件)")

    conn = message(with({{"Received", "from mx.example.com ([203.0.113.25]) by mx.example.com; " ..
                                      "Sat, 28 Nov 2026 16:00:00 +0000"}}))
    body(conn, {"hi\r\n"})
    expect_eom(conn, "fake_router", "553", "5.7.1", "fake router infomation. (伪造的路由信息)")

    conn = message(base)
    body(conn, {"ok line\r\n" .. string.rep("z", 999) .. "\r\n"})
    expect_eom(conn, "line_parse_error", "551", "5.6.0", "line parse error. (该行违背协议)")

    conn = message(base)
    local chunk = string.rep(string.rep("x", 78) .. "\r\n", 800) -- 64,000 octets
    local chunks = {}
    for i = 1, 17 do chunks[i] = chunk end
    body(conn, chunks)
    expect_eom(conn, "message_too_long", "552", "5.3.4", "message is too long. (邮件大小超过限制)")

    local mimeheaders = with({{"MIME-Version", "1.0"},
                              {"Content-Type", "multipart/mixed; boundary=\"b1\""}})
    conn = message(mimeheaders)
    local b64 = string.rep(string.rep("QUFB", 19) .. "\r\n", 880) -- 50,160 decoded octets
    body(conn, pieces("--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n" ..
                      "Content-Type: application/octet-stream; name=\"big.bin\"\r\n" ..
                      "Content-Transfer-Encoding: base64\r\n" ..
                      "Content-Disposition: attachment; filename=\"big.bin\"\r\n\r\n" ..
                      b64 .. "--b1--\r\n", 30000))
    expect_eom(conn, "attachment_too_long", "554", "5.3.4",
               "attachment is too long. (单个附件大小超出限制)")
    mt.echo("content.lua: all checks passed")
end

-- miltertest exits 1 without a word on a Lua error: print it.
local ok, err = pcall(main)
if not ok then
    mt.echo("content.lua: FAILED: " .. tostring(err))
    os.exit(1)
end
