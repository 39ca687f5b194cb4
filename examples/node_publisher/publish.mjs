#!/usr/bin/env node
// Publish one signed murmur task to Redis and wait for its signed result.
//
//   node publish.mjs AGENT 'INPUT_JSON' [--redis redis://localhost:6379] [--timeout 30]
//
// No npm packages: node:crypto for HMAC-SHA256, a small RESP client over node:net (or
// node:tls for rediss://). The key comes from MURMUR_SIGNING_KEYS like every murmur
// process ("kid:hexkey" or "hexkey", comma-separated; the first one signs); without it
// the task is unsigned. Prints the result body (JSON) on stdout.
// Exit codes: 0 ok, 1 task error or rejected, 2 usage or bad result signature, 3 timeout.
// Wire format: docs/wire-format.md.

import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import net from "node:net";
import tls from "node:tls";
import { fileURLToPath } from "node:url";

export const TASK_DOMAIN = "murmur/v1/task\n";
export const RESULT_DOMAIN = "murmur/v1/result\n";

/** hex(HMAC-SHA256(key, domain + body)): body is the exact bytes sent. */
export function sign(key, body, domain = TASK_DOMAIN) {
  return createHmac("sha256", key).update(domain).update(body).digest("hex");
}

/** The default key id: the first 8 hex characters of sha256(key). */
export function keyId(key) {
  return createHash("sha256").update(key).digest("hex").slice(0, 8);
}

/** MURMUR_SIGNING_KEYS -> [{kid, key}], the signing key first. */
export function parseKeys(spec) {
  return (spec || "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((entry) => {
      const at = entry.lastIndexOf(":");
      const key = Buffer.from(entry.slice(at + 1), "hex");
      return { kid: at >= 0 ? entry.slice(0, at) : keyId(key), key };
    });
}

/** A minimal RESP2 client: commands in, parsed replies out, in order. */
class Redis {
  constructor(url) {
    const u = new URL(url);
    const options = { host: u.hostname || "localhost", port: Number(u.port || 6379) };
    this.socket =
      u.protocol === "rediss:"
        ? tls.connect({ ...options, servername: options.host })
        : net.connect(options);
    this.buffer = Buffer.alloc(0);
    this.pending = [];
    this.socket.on("data", (chunk) => this.onData(chunk));
    this.socket.on("error", (err) => this.pending.splice(0).forEach((p) => p.reject(err)));
    this.ready = (async () => {
      if (u.password) {
        const user = decodeURIComponent(u.username || "default");
        await this.call("AUTH", user, decodeURIComponent(u.password));
      }
      const db = u.pathname.replace("/", "");
      if (db) await this.call("SELECT", db);
    })();
  }

  call(...args) {
    const parts = [Buffer.from(`*${args.length}\r\n`)];
    for (const arg of args) {
      const b = Buffer.isBuffer(arg) ? arg : Buffer.from(String(arg));
      parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from("\r\n"));
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(Buffer.concat(parts));
    });
  }

  onData(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const parsed = parse(this.buffer, 0);
      if (parsed === null) return; // incomplete: wait for more bytes
      const [value, end] = parsed;
      this.buffer = this.buffer.subarray(end);
      const p = this.pending.shift();
      if (value instanceof Error) p.reject(value);
      else p.resolve(value);
    }
  }

  close() {
    this.socket.end();
  }
}

/** Parse one RESP2 value at `at`: [value, next offset], or null when incomplete. */
function parse(buf, at) {
  const eol = buf.indexOf("\r\n", at);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[at]);
  const line = buf.toString("utf8", at + 1, eol);
  const next = eol + 2;
  if (type === "+") return [line, next];
  if (type === "-") return [new Error(line), next];
  if (type === ":") return [Number(line), next];
  if (type === "$") {
    const n = Number(line);
    if (n < 0) return [null, next];
    if (buf.length < next + n + 2) return null;
    return [buf.subarray(next, next + n), next + n + 2];
  }
  if (type === "*") {
    const n = Number(line);
    if (n < 0) return [null, next];
    const items = [];
    let pos = next;
    for (let i = 0; i < n; i++) {
      const item = parse(buf, pos);
      if (item === null) return null;
      items.push(item[0]);
      pos = item[1];
    }
    return [items, pos];
  }
  throw new Error(`unexpected RESP type ${JSON.stringify(type)}`);
}

/** Stream entry fields [name, value, ...] -> {body: Buffer, headers: {name: string}}. */
function entryFields(fields) {
  const headers = {};
  let body = Buffer.alloc(0);
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i].toString();
    if (name === "body") body = fields[i + 1];
    else headers[name] = fields[i + 1].toString();
  }
  return { body, headers };
}

function verify(keys, body, headers) {
  const sig = Buffer.from(headers["murmur-sig"] || "", "utf8");
  const candidates = headers["murmur-kid"]
    ? keys.filter((k) => k.kid === headers["murmur-kid"])
    : keys;
  return candidates.some((k) => {
    const expected = Buffer.from(sign(k.key, body, RESULT_DOMAIN), "utf8");
    return expected.length === sig.length && timingSafeEqual(expected, sig);
  });
}

export async function publish({ redisUrl, agent, input, keys, timeoutS = 30, ttlS = 600 }) {
  const redis = new Redis(redisUrl);
  await redis.ready;
  const clientId = `node-${randomBytes(6).toString("hex")}`;
  const replyTo = `murmur.results.${clientId}`;
  const now = Date.now();
  const taskId = randomUUID();
  const task = {
    v: 1,
    task_id: taskId,
    agent,
    input,
    reply_to: replyTo,
    events_topic: null,
    request_id: taskId,
    created_at: now,
    expires_at: now + ttlS * 1000,
  };
  const body = Buffer.from(JSON.stringify(task), "utf8"); // these exact bytes are signed
  const fields = ["body", body, "content-type", "application/json"];
  if (keys.length) {
    fields.push("murmur-sig", sign(keys[0].key, body), "murmur-kid", keys[0].kid);
  }
  try {
    await redis.call("XADD", `murmur.${agent}.tasks`, "*", ...fields);
    console.error(`task ${taskId} -> murmur.${agent}.tasks; waiting on ${replyTo}`);
    // A fresh results stream holds only our answer: read it from the start.
    let last = "0-0";
    const deadline = Date.now() + timeoutS * 1000;
    while (Date.now() < deadline) {
      const block = Math.max(1, Math.min(1000, deadline - Date.now()));
      const reply = await redis.call("XREAD", "COUNT", 10, "BLOCK", block, "STREAMS", replyTo, last);
      for (const [, entries] of reply || []) {
        for (const [id, raw] of entries) {
          last = id.toString();
          const { body: resultBody, headers } = entryFields(raw);
          const result = JSON.parse(resultBody.toString("utf8"));
          if (result.task_id !== taskId) continue;
          if (keys.length && !verify(keys, resultBody, headers)) {
            console.error("result signature does not verify: ignored");
            return { code: 2 };
          }
          process.stdout.write(resultBody.toString("utf8") + "\n");
          return { code: result.status === "ok" ? 0 : 1, result };
        }
      }
    }
    console.error(`no result within ${timeoutS}s`);
    return { code: 3 };
  } finally {
    await redis.call("DEL", replyTo).catch(() => {});
    redis.close();
  }
}

function usage() {
  console.error("usage: node publish.mjs AGENT 'INPUT_JSON' [--redis URL] [--timeout S]");
  process.exit(2);
}

async function main(argv) {
  const positional = [];
  const options = { redis: process.env.REDIS_URL || "redis://localhost:6379", timeout: "30" };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith("--")) options[argv[i].slice(2)] = argv[++i];
    else positional.push(argv[i]);
  }
  if (positional.length < 1) usage();
  let input = null;
  try {
    input = JSON.parse(positional[1] ?? "null");
  } catch {
    console.error("INPUT_JSON is not valid JSON");
    process.exit(2);
  }
  const { code } = await publish({
    redisUrl: options.redis,
    agent: positional[0],
    input,
    keys: parseKeys(process.env.MURMUR_SIGNING_KEYS),
    timeoutS: Number(options.timeout),
  });
  process.exit(code);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(`error: ${err.message}`);
    process.exit(1);
  });
}
