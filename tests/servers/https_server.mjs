// A Node.js HTTPS server for the end-to-end tests (OpenSSL linked into the node binary).
//
// Usage: node https_server.mjs PORT CERT KEY   (prints "ready" when listening)
//   /plain        200 "ok\n"
//   /status/NNN   status NNN, body "status\n"
//   /echo         200, the request body
import fs from "node:fs";
import https from "node:https";

const [port, cert, key] = process.argv.slice(2);
const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const status = req.url.startsWith("/status/") ? Number(req.url.slice(8)) : 200;
    const body = req.url === "/echo" ? Buffer.concat(chunks) : Buffer.from(status === 200 ? "ok\n" : "status\n");
    res.writeHead(status, { "Content-Type": "text/plain", "Content-Length": body.length });
    res.end(body);
  });
});
server.keepAliveTimeout = 60000;
server.listen(Number(port), "127.0.0.1", () => console.log("ready"));
