// A Node.js client for the end-to-end tests: waits for a line on stdin, then makes
// each request of its arguments in order, prints "STATUS BODYLEN" per request and
// "done", and stays up (keep-alive connections idle) until stdin closes.
//
// Usage: node http_client.mjs (http|fetch) METHOD URL BODY ...   ("-" for no body)
import http from "node:http";
import https from "node:https";
import readline from "node:readline";

const [api, ...rest] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true });
// https URLs: Node's own OpenSSL; the test certificates are self-signed
const tlsAgent = new https.Agent({ keepAlive: true, rejectUnauthorized: false });

function viaHttp(method, url, body) {
  return new Promise((resolve, reject) => {
    const headers = body === "-" ? {} : { "Content-Length": Buffer.byteLength(body) };
    const tls = url.startsWith("https:");
    const req = (tls ? https : http).request(url, { method, agent: tls ? tlsAgent : agent, headers }, (res) => {
      let size = 0;
      res.on("data", (chunk) => { size += chunk.length; });
      res.on("end", () => resolve([res.statusCode, size]));
    });
    req.on("error", reject);
    if (body !== "-") req.write(body);
    req.end();
  });
}

async function viaFetch(method, url, body) {
  const res = await fetch(url, { method, body: body === "-" ? undefined : body });
  const data = await res.arrayBuffer();
  return [res.status, data.byteLength];
}

const lines = readline.createInterface({ input: process.stdin });
console.log("ready");
let started = false;
lines.on("line", async () => {
  if (started) return;
  started = true;
  for (let i = 0; i + 2 < rest.length; i += 3) {
    const [status, size] = await (api === "fetch" ? viaFetch : viaHttp)(rest[i], rest[i + 1], rest[i + 2]);
    console.log(status, size);
  }
  console.log("done");
});
lines.on("close", () => process.exit(0));
