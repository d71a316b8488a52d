-- Envelope-stage replies through Debian's miltertest (Lua harness).
-- Run as: miltertest -D socket=unix:/path -s envelope.lua
-- mt.getreply only returns the reply type, so this script checks the type; the exact
-- code and text are asserted at end of message with mt.eom_check (content checks) and
-- at every stage by the PyPI client tests.

local function check(cond, msg)
    if not cond then
        error(msg)
    end
end

local function main()
local function session(ip)
    local conn = mt.connect(socket, 40, 0.05)
    check(conn ~= nil, "cannot connect to " .. socket)
    check(mt.macro(conn, SMFIC_CONNECT, "v", "Postfix 3.7.11", "j", "mx.example.com") == nil,
          "macro failed")
    check(mt.conninfo(conn, "[" .. ip .. "]", ip) == nil, "conninfo failed")
    check(mt.getreply(conn) == SMFIR_CONTINUE, "connect not continued")
    check(mt.helo(conn, "mail.sender.example") == nil, "helo failed")
    check(mt.getreply(conn) == SMFIR_CONTINUE, "helo not continued")
    return conn
end

-- An untrusted client relaying to a foreign domain: a custom reply (SMFIR_REPLYCODE).
local conn = session("198.51.100.7")
check(mt.mailfrom(conn, "<a@sender.example>") == nil, "mailfrom failed")
check(mt.getreply(conn) == SMFIR_CONTINUE, "mail not continued")
check(mt.rcptto(conn, "<x@foreign.example>") == nil, "rcptto failed")
check(mt.getreply(conn) == SMFIR_REPLYCODE, "relay attempt not refused with a reply code")
mt.disconnect(conn)

-- Denied sender at MAIL FROM.
conn = session("198.51.100.7")
check(mt.mailfrom(conn, "<spammer@bad.example>") == nil, "mailfrom failed")
check(mt.getreply(conn) == SMFIR_REPLYCODE, "denied sender not refused")
mt.disconnect(conn)

-- A legitimate message goes through to end of message and is not refused.
conn = session("198.51.100.7")
check(mt.mailfrom(conn, "<friend@sender.example>") == nil, "mailfrom failed")
check(mt.getreply(conn) == SMFIR_CONTINUE, "legitimate sender refused")
check(mt.rcptto(conn, "<alice@example.com>") == nil, "rcptto failed")
check(mt.getreply(conn) == SMFIR_CONTINUE, "local recipient refused")
-- miltertest offers SMFIP_HDR_LEADSPC and smtpguard takes it: values go as written
-- after the colon, the space included, and the milter's own come back with one.
check(mt.header(conn, "From", " friend@sender.example") == nil, "header failed")
check(mt.header(conn, "Subject", " hello") == nil, "header failed")
-- No mt.eoh: negotiated away (SMFIP_NOEOH); the first body chunk stands for it.
check(mt.bodystring(conn, "Hello Alice.\r\n") == nil, "body failed")
check(mt.eom(conn) == nil, "eom failed")
local reply = mt.getreply(conn)
check(reply == SMFIR_CONTINUE or reply == SMFIR_ACCEPT,
      "legitimate message refused at end of message")
-- It leaves as it came but for the anti-spam status: this service stamps no loop
-- marker, and without DNS there is no Authentication-Results to insert. (mt.eom_check
-- with MT_SMTPREPLY only matches one given reply text, so the reply code above is what
-- says no reply was set.)
check(mt.eom_check(conn, MT_HDRADD, "X-Spam-Status", " No, score=0.0 required=6.0 tests=none"),
      "no X-Spam-Status added")
local changes = {
    ["header inserted"] = MT_HDRINSERT,
    ["header changed"] = MT_HDRCHANGE,
    ["body replaced"] = MT_BODYCHANGE,
}
for change, op in pairs(changes) do
    check(not mt.eom_check(conn, op), "legitimate message changed: " .. change)
end
mt.disconnect(conn)
mt.echo("envelope.lua: all checks passed")
end

-- miltertest exits 1 without a word on a Lua error: print it.
local ok, err = pcall(main)
if not ok then
    mt.echo("envelope.lua: FAILED: " .. tostring(err))
    os.exit(1)
end
